"""One run's state from its markers and the queue: new | pending | running | requeued | done | failed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from launch import queue, runstate

STATES = ("new", "pending", "running", "requeued", "done", "failed")


@dataclass(frozen=True)
class RunState:
    run_dir: Path
    state: str
    job_id: str | None = None
    detail: str = ""


def run_state(run_dir: str | Path, states: dict[str, str] | None) -> RunState:
    """Combine the task's own status file with the queue (`states` from queue.squeue_states())."""
    run_dir = Path(run_dir)
    status = runstate.read_status(run_dir) or {}
    sub = runstate.read_submission(run_dir)
    if status.get("state") == "done":
        return RunState(run_dir, "done", sub and sub.get("job_id"))
    if sub is None:
        return RunState(run_dir, "new")
    job_id = str(sub["job_id"])
    in_queue = queue.queue_state(job_id, sub.get("cluster", "slurm"), states)
    if in_queue is not None:
        if status.get("state") == "requeued":
            return RunState(run_dir, "requeued", job_id, f"attempt {status.get('attempt', 1)} requeued")
        if in_queue == "pending":
            return RunState(run_dir, "pending", job_id)
        return RunState(run_dir, "running", job_id)
    if status.get("state") == "failed":
        return RunState(run_dir, "failed", job_id, str(status.get("error", "")))
    if sub.get("cluster") == "debug":
        return RunState(run_dir, "failed", job_id, "debug run did not finish")
    if sub.get("cluster") == "slurm" and states is None:
        return RunState(run_dir, "pending", job_id, "squeue unavailable: state unknown")
    # gone from the queue without writing 'done': killed, timed out for good, node failure, ...
    return RunState(run_dir, "failed", job_id, f"job {job_id} left the queue without finishing; logs: {sub.get('logs')}")


def states_of(run_dirs: list[Path]) -> list[RunState]:
    snapshot = queue.squeue_states()
    return [run_state(d, snapshot) for d in run_dirs]


def wait_for(run_dirs: list[Path], timeout_s: float, poll_s: float = 2.0) -> list[RunState]:
    """Poll until every run is done or failed (or the timeout passes); returns the last states."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = states_of(run_dirs)
        if all(s.state in runstate.TERMINAL for s in current) or time.monotonic() > deadline:
            return current
        time.sleep(poll_s)
