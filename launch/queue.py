"""What the scheduler says about jobs, without relying on SLURM accounting.

`sacct` needs slurmdbd, which many small clusters (and the test cluster) do not run; submitit
then reports every job as UNKNOWN. `squeue` always works for jobs still in the queue, and
the task's own markers (launch.runstate) cover the finished ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# squeue states grouped into what a user cares about
PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD", "SUSPENDED",
           "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT"}
RUNNING = {"RUNNING", "COMPLETING"}


def squeue_states() -> dict[str, str] | None:
    """Job id ('123' or array element '123_4') -> SLURM state, for every job in the queue.

    None when squeue is missing or fails (no controller): callers then cannot tell queued from gone.
    """
    if shutil.which("squeue") is None:
        return None
    # -r: one line per array element (else pending elements are folded into '123_[0-3%4]')
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state
    return states


def local_job_alive(job_id: str) -> bool:
    """submitit's local executor uses the controller's pid as job id."""
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def queue_state(job_id: str, cluster: str, states: dict[str, str] | None) -> str | None:
    """'pending' | 'running' while the job is queued; None when it left the queue (or unknown)."""
    if cluster == "local":
        return "running" if local_job_alive(job_id) else None
    if cluster != "slurm" or states is None:
        return None
    state = states.get(job_id)
    if state is None:
        return None
    if state in RUNNING:
        return "running"
    if state in PENDING:
        return "pending"
    return None
