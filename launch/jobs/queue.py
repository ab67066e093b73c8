"""What the scheduler says about jobs, without relying on SLURM accounting.

`sacct` needs slurmdbd, which many small clusters (and the test cluster) do not run; submitit
then reports every job as UNKNOWN. The controller itself still knows every job it ran in the
last `MinJobAge` seconds, with its state and restart count: `squeue --states=all` lists them
all at once, `scontrol show job ID` asks about one. Only a state SLURM itself calls final
(COMPLETED, FAILED, ...) means a job is over; every other state, including one this module
has never heard of, means it may still run (a job being requeued passes through COMPLETING,
REQUEUED, PENDING with a hold ...).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from launch.jobs.runstate import State

# SLURM's final job states (job_state_string of the base states past RUNNING/SUSPENDED)
FINAL = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "TIMEOUT", "REVOKED"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
GONE = "GONE"  # the controller does not know the job (any more): purged after MinJobAge, or never existed


@dataclass(frozen=True)
class JobView:
    """One job as the controller reports it: its state string and how often SLURM restarted it."""

    state: str
    restarts: int = 0

    @property
    def phase(self) -> str:
        """'final' | 'running' | 'pending': anything not known to be final or running counts as pending."""
        if self.state in FINAL or self.state == GONE:
            return "final"
        return State.RUNNING if self.state in RUNNING else State.PENDING


def _slurm(*args: str) -> subprocess.CompletedProcess | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None  # an overloaded controller: the caller treats the state as unknown


def parse_squeue(text: str) -> dict[str, JobView]:
    """`squeue -O JobArrayID:|,State:|,RestartCnt:|` lines -> job id -> view."""
    jobs: dict[str, JobView] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[0]:
            restarts = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
            jobs[fields[0]] = JobView(fields[1], restarts)
    return jobs


def squeue_states() -> dict[str, JobView] | None:
    """Job id ('123' or array element '123_4') -> view, for every job the controller knows.

    None when squeue is missing or fails (no controller): callers then cannot tell queued from gone.
    """
    # -r: one line per array element (else pending elements are folded into '123_[0-3%4]');
    # --states=all: finished jobs too, so that "over" is SLURM's word, not a job's absence
    out = _slurm("squeue", "-h", "-r", "--states=all", "-O", "JobArrayID:|,State:|,RestartCnt:|")
    if out is None or out.returncode != 0:
        return None
    return parse_squeue(out.stdout)


def parse_scontrol(text: str) -> JobView | None:
    """One `scontrol show job -o` record -> view (None when it holds no JobState)."""
    state = re.search(r"\bJobState=(\S+)", text)
    if state is None:
        return None
    restarts = re.search(r"\bRestarts=(\d+)", text)
    return JobView(state.group(1), int(restarts.group(1)) if restarts else 0)


def scontrol_state(job_id: str) -> JobView | None:
    """A fresh look at one job: its view, JobView(GONE) when the controller does not know it, None if unknown."""
    out = _slurm("scontrol", "show", "job", "-o", job_id)
    if out is None:
        return None
    if out.returncode != 0:
        return JobView(GONE) if "Invalid job id" in out.stderr else None
    return parse_scontrol(out.stdout)


def local_job_alive(job_id: str) -> bool:
    """submitit's local executor uses the controller's pid as job id."""
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def queue_state(job_id: str, cluster: str, states: dict[str, JobView] | None) -> str | None:
    """'pending' | 'running' while the job may still run; None when it is over or unknown to SLURM."""
    if cluster == "local":
        return State.RUNNING if local_job_alive(job_id) else None
    if cluster != "slurm" or states is None:
        return None
    view = states.get(job_id, JobView(GONE))
    return None if view.phase == "final" else view.phase
