"""One checkpoint manager per run (as torchtitan's CheckpointManager): the trainer registers its
states once, and the manager owns everything else about checkpoints:

- cadence: every `train.checkpoint_every` steps and at the last step (`checkpoint_due`);
- the write: every rank's files into `ckpt/.tmp_step_N/`, then (rank 0) `meta.json` and the
  manifest, written last, then the rename; ranks agree on success through one all-reduce, so a
  failure on any rank stops every rank, with the partial folder removed;
- keep-k: the newest `train.keep_checkpoints` complete checkpoints stay, the rest go;
- the load: the newest checkpoint whose manifest matches (checksums included), skipping broken
  newer ones with a one-line warning each;
- preemption: SIGTERM / SIGUSR2 / SIGINT stop every rank at the same step boundary with one
  checkpoint of that step (see `preemption`);
- the run-folder lock (see `run_lock`) and the start-up clean-up of partial writes it makes safe;
- disk space: a warning before training when the file system cannot hold two checkpoints, and
  one line when a write runs out of space.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dinotrain.errors import UserError, describe
from dinotrain.run_layout import (
    checkpoint_dirs,
    ckpt_root,
    latest_checkpoint,
    list_checkpoints,
    step_dir,
    step_of,
    usable_checkpoint,
)
from dinotrain.train.checkpoint import Registered, read_files, write_files, write_meta
from dinotrain.train.distributed import DistEnv, barrier
from dinotrain.train.preemption import StopSignals, TrainingStopped, signal_name
from dinotrain.train.run_lock import RunFolderLocked, RunLock

log = logging.getLogger("dinotrain.train")


def checkpoint_due(n: int, every: int, max_steps: int) -> bool:
    """Whether a checkpoint is written after `n` completed steps: every `every` and at the end."""
    return n % every == 0 or n == max_steps


class DiskFullError(UserError):
    """A checkpoint write ran out of space (the partial folder is removed)."""


def _rank_max(value: int, device: torch.device | str = "cpu") -> int:
    """The largest `value` of any rank (a collective when there are several)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _errors_in(exc: BaseException | None) -> list[BaseException]:
    """`exc`, its causes and contexts, and the per-rank failures a DCP CheckpointException wraps."""
    seen: list[BaseException] = []
    todo = [exc] if exc is not None else []
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        for failure in (getattr(e, "failures", None) or {}).values():
            todo.append(failure[0] if isinstance(failure, tuple) else failure)
    return seen


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def estimate_checkpoint_bytes(student: torch.nn.Module, teacher: torch.nn.Module) -> int:
    """Bytes of one checkpoint: student and teacher parameters and AdamW's two moments per
    student parameter (numel of a sharded DTensor is the whole tensor's)."""
    student_b = sum(p.numel() * p.dtype.itemsize for p in student.parameters())
    teacher_b = sum(p.numel() * p.dtype.itemsize for p in teacher.parameters())
    return 3 * student_b + teacher_b


class CheckpointManager:
    """Save, load, keep and guard the checkpoints of one run folder (see the module docstring)."""

    def __init__(self, output_dir: str | Path, env: DistEnv, every: int, keep: int, max_steps: int,
                 resume: bool = True):
        self.out, self.env = Path(output_dir), env
        self.every, self.keep, self.max_steps, self.resume_enabled = every, keep, max_steps, resume
        self.lock = RunLock(self.out)
        self.signals = StopSignals()
        self.states: Registered | None = None
        self.last: Path | None = None  # the newest complete checkpoint this run wrote or resumed from
        self.resumed_from: Path | None = None
        self._saved_step: int | None = None
        self._stopped = False

    @classmethod
    def from_config(cls, cfg: Any, env: DistEnv) -> CheckpointManager:
        t = cfg.train
        return cls(cfg.output_dir, env, int(t.checkpoint_every), int(t.keep_checkpoints), int(t.max_steps),
                   bool(t.resume))

    # ------------------------------------------------------------------------- the lock
    def acquire_lock(self) -> None:
        """Rank 0 takes the run folder's lock before anything is written; every rank raises
        RunFolderLocked when it could not (one collective, so no rank waits for the others)."""
        message = None
        if self.env.is_main:
            try:
                note = self.lock.acquire()
                if note:
                    log.warning(note)
            except (UserError, OSError) as e:
                message = describe(e) or str(e)
        if _rank_max(int(message is not None), self.env.device):
            raise RunFolderLocked(message or f"output_dir {self.out} is in use by another training (see rank 0)")

    def release_lock(self) -> None:
        if self.env.is_main:
            self.lock.release()

    # ------------------------------------------------------------------------- start, resume
    def register(self, student: torch.nn.Module, teacher: torch.nn.Module, optimizer: Any, train_state: Any) -> None:
        """The states a checkpoint holds, once, by the trainer."""
        self.states = Registered(student, teacher, optimizer, train_state)

    def start(self) -> int:
        """Before the first step: remove partial writes (the lock makes them ours), warn when the
        disk is short, install the stop signals, resume. Returns the step to start from."""
        if self.env.is_main:
            for tmp in ckpt_root(self.out).glob(".tmp_step_*"):
                shutil.rmtree(tmp, ignore_errors=True)
            self._warn_if_short_of_space()
        barrier()
        self.signals.install()
        return self.resume()

    def _warn_if_short_of_space(self) -> None:
        from dinotrain.train.preflight import space_warning

        need = estimate_checkpoint_bytes(self.states.student, self.states.teacher)
        warning = space_warning(self.out, need, free_bytes(self.out))
        if warning:
            log.warning(warning)

    def _pick(self) -> Path | None:
        """Rank 0 checks the candidates (full reads) and tells the others which step it chose."""
        chosen = -1
        if self.env.is_main:
            path = usable_checkpoint(self.out, warn=log.warning)
            chosen = step_of(path) if path is not None else -1
        chosen = _rank_max(chosen, self.env.device)
        return step_dir(self.out, chosen) if chosen >= 0 else None

    def resume(self) -> int:
        """Restore the newest complete checkpoint (when train.resume); the step to start from."""
        ckpt = self._pick() if self.resume_enabled else None
        if ckpt is None:
            return 0
        meta, own_state = read_files(ckpt, self.states, self.env.rank, self.env.world_size)
        if not own_state and self.env.is_main:
            log.warning("checkpoint %s was written by %s processes, this run has %d: networks and optimiser "
                        "are resharded exactly; the data order restarts for the new partition",
                        ckpt, meta.get("world_size"), self.env.world_size)
        self.last = self.resumed_from = ckpt
        self._saved_step = int(meta["step"])
        if self.env.is_main:
            print(f"resumed from step {meta['step']} ({ckpt.relative_to(self.out)})", file=sys.stderr, flush=True)
        return int(meta["step"])

    def close(self) -> None:
        """At the end of the run: our signal handlers go (kept after a stop: a late USR2 must not
        reach submitit's handler a second time while the process exits)."""
        if not self._stopped:
            self.signals.restore()

    # ------------------------------------------------------------------------- each step
    def save_if_due(self, n: int) -> Path | None:
        return self.save(n) if checkpoint_due(n, self.every, self.max_steps) else None

    def stop_if_requested(self, n: int) -> None:
        """At the boundary after step `n` (every rank): when any rank got a stop signal, save step
        `n` (unless just saved), hand the signal on (a requeue) and raise TrainingStopped."""
        code = self.signals.agreed(self.env.device)
        if not code or n >= self.max_steps:
            return
        self._stopped = True
        if self._saved_step != n:
            self.save(n)
        name = signal_name(code)
        where = str(self.last.relative_to(self.out)) if self.last else "?"
        if self.env.is_main:
            print(f"{name}: stopped at the step boundary, saved at step {n} ({where})", file=sys.stderr, flush=True)
        self.signals.hand_over(code)
        raise TrainingStopped(n, name, where)

    # ------------------------------------------------------------------------- the write
    def save(self, n: int) -> Path:
        """Write checkpoint `n` (every rank calls it); keep the newest `keep` complete ones."""
        final = step_dir(self.out, n)
        tmp = final.parent / f".tmp_{final.name}"
        if self.env.is_main:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        err = self._attempt(write_files, tmp, self.states, self.env.rank)
        ok = not _rank_max(int(err is not None), self.env.device)
        if ok and self.env.is_main:
            err = self._attempt(self._seal, tmp, final, n)
        if not ok or _rank_max(int(err is not None), self.env.device):
            raise self._failed(n, tmp, err)
        if self.env.is_main:
            self._prune()
        barrier()
        self.last, self._saved_step = final, n
        return final

    @staticmethod
    def _attempt(fn, *args) -> BaseException | None:
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

        try:
            fn(*args)
        except (Exception, CheckpointException) as e:  # reported after every rank knows (see _failed)
            return e
        return None

    def _seal(self, tmp: Path, final: Path, n: int) -> None:
        """Rank 0, once every rank's files are in: meta.json, the manifest last, the rename."""
        from dinotrain.ckpt_manifest import write_manifest

        write_meta(tmp, n, self.env.world_size)
        write_manifest(tmp)
        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        tmp.rename(final)

    def _prune(self) -> None:
        keep = {p for _, p in list_checkpoints(self.out)[-self.keep:]}
        for _, path in checkpoint_dirs(self.out):
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def _failed(self, n: int, tmp: Path, err: BaseException | None) -> Exception:
        """Every rank: remove the partial folder (rank 0) and build the error to raise."""
        need = estimate_checkpoint_bytes(self.states.student, self.states.teacher)
        full = any(isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e)
                   for e in _errors_in(err))
        full = full or (err is not None and free_bytes(tmp) < need)  # torch's zip writer hides the errno
        full = bool(_rank_max(int(full), self.env.device))
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        rel = step_dir(self.out, n).relative_to(self.out)
        last = latest_checkpoint(self.out)
        kept = (f"the last complete checkpoint, step {step_of(last)}, is intact" if last
                else "no complete checkpoint was written before")
        if full:
            return DiskFullError(f"no space left on device writing {rel} (needs ~{need / 1e6:.0f} MB); {kept}: "
                                 f"free space on the file system of {self.out} (or choose another output_dir) and "
                                 "run again to resume")
        if err is None:
            return RuntimeError(f"writing {rel} failed on another rank; {kept}")
        message = describe(err)
        if message is not None:
            return UserError(f"writing {rel} failed: {message}; {kept}")
        failure = RuntimeError(f"writing {rel} failed ({type(err).__name__}: {err}); {kept}")
        failure.__cause__ = err  # a bug: its traceback is the report
        return failure
