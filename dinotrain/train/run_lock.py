"""One writer per run folder: `output_dir/train.lock` names the training that owns the folder.

Two trainings writing one folder mix their tensors, RNG states, configs and metrics, and the
result looks like one run. So rank 0 of a training creates the lock before it writes anything
and removes it when it ends; a second training is refused in one line that names the holder.

The lock file is complete the moment it exists (written to a private temporary name, then
hard-linked into place: `link` fails when the name is taken, atomically, on local file systems
and NFS alike). It is taken over, with a note, when its holder is known to be gone:
- the same SLURM job (a requeued attempt: SLURM starts it only after the last one ended), or
- a process on this host that no longer runs (or whose pid now belongs to another process).
A holder on another host cannot be probed from here: the message says how to remove its lock.
Two processes taking over one stale lock race through a rename that only one of them wins.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dinotrain.errors import UserError
from dinotrain.run_layout import LOCK  # the lock's name, with the run folder's other names


class RunFolderLocked(UserError):
    """Another training holds the run folder."""


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 on), [] when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def _proc_start(pid: int) -> str:
    """The kernel's start time of `pid` (tells a reused pid from the original), '' when unknown."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""  # field 22


def _exited(pid: int) -> bool:
    """A zombie (or dying) process has exited: a kill -9'd training whose parent has not reaped it
    yet still answers kill(pid, 0), and must not hold the folder."""
    fields = _proc_stat(pid)
    return bool(fields) and fields[0] in ("Z", "X", "x")


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    job_id: str  # SLURM_JOB_ID, '' outside SLURM
    started: float
    proc_start: str = ""

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID", ""), time.time(),
                   _proc_start(os.getpid()))

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        job = f", SLURM job {self.job_id}" if self.job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, started {when}"

    def alive(self) -> bool | None:
        """False when gone, True when running, None when it runs on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's live process
        if _exited(self.pid):
            return False
        now = _proc_start(self.pid)
        return not (self.proc_start and now and now != self.proc_start)


def _read(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def stale_reason(holder: Holder | None, me: Holder) -> str | None:
    """Why `holder`'s lock may be taken over by `me` (None: it may not)."""
    if holder is None:
        return "an unreadable lock"
    if holder.job_id and holder.job_id == me.job_id:
        return f"an earlier attempt of SLURM job {holder.job_id} ({holder.describe()})"
    if holder.alive() is False:
        return f"a training that is gone ({holder.describe()})"
    return None


class RunLock:
    """`acquire()` before the first write to the folder, `release()` at the end (rank 0 only)."""

    def __init__(self, output_dir: str | Path):
        self.out = Path(output_dir)
        self.path = self.out / LOCK
        self.me = Holder.me()
        self.held = False

    def _try_create(self) -> bool:
        tmp = self.path.with_name(f".{LOCK}.{self.me.pid}.tmp")
        tmp.write_text(json.dumps(asdict(self.me)) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was taken over. Raises RunFolderLocked."""
        self.out.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(3):  # create; or take a stale lock over and create; a lost race ends refused
            if self._try_create():
                self.held = True
                return note
            holder = _read(self.path)
            reason = stale_reason(holder, self.me)
            if reason is None:
                raise RunFolderLocked(
                    f"output_dir {self.out} is in use by another training ({holder.describe()}): wait for it to "
                    f"end or stop it, or choose another output_dir (if that process is gone, delete {self.path})")
            if self._move_aside(holder):
                note = f"output_dir {self.out}: took over the lock of {reason}"
        holder = _read(self.path)
        raise RunFolderLocked(f"output_dir {self.out} is in use by another training "
                              f"({holder.describe() if holder else 'unknown holder'}): choose another output_dir")

    def _move_aside(self, judged: Holder | None) -> bool:
        """Rename the stale lock away (one of several takers wins). A taker that was too late
        moved the winner's fresh lock instead: it puts that one back and reports False."""
        stale = self.path.with_name(f".{LOCK}.stale.{self.me.pid}")
        try:
            self.path.rename(stale)
        except FileNotFoundError:
            return False
        try:
            if _read(stale) == judged:
                return True
            try:
                os.link(stale, self.path)
            except FileExistsError:
                pass
            return False
        finally:
            stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours (a process that took it over keeps its own)."""
        if self.held and _read(self.path) == self.me:
            self.path.unlink(missing_ok=True)
        self.held = False
