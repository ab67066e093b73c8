"""One run's state from its markers and the queue: new | pending | running | requeued | done | failed.

A run is failed only on firm evidence: its task wrote `failed`, or SLURM itself calls the job
over (a final state, or the controller no longer knows it) and the run's markers say it did
not finish. A job in any other state, including one being requeued or one in a state we do
not know, is still queued. Evidence of an end is double-checked with a fresh `scontrol show
job` read after the markers, so a snapshot taken a moment too early can never fail a run
whose task just finished or was just requeued. `sweep` resubmits only new and failed runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.jobs import queue, runstate
from launch.jobs.queue import JobView
from launch.jobs.runstate import State

STATES = tuple(State)
# A task marked 'requeued' asked SLURM to requeue its job. SLURM may show the old attempt as
# ended before the requeue takes (a job can be requeued from a final state); only once its
# restart count moved on, or this long after the request, does an ended job mean a failed run.
REQUEUE_GRACE_S = 600.0


@dataclass(frozen=True)
class RunState:
    run_dir: Path
    state: State
    job_id: str | None = None
    detail: str = ""


def _queued(run_dir: Path, marker: dict[str, Any], job_id: str, phase: str, slurm_state: str = "") -> RunState:
    shown = "" if slurm_state in ("", "PENDING", "RUNNING") else f"SLURM state {slurm_state}"
    if marker.get("state") == State.REQUEUED:
        detail = f"attempt {marker.get('attempt', 1)} requeued" + (f"; {shown}" if shown else "")
        return RunState(run_dir, State.REQUEUED, job_id, detail)
    return RunState(run_dir, State(phase), job_id, shown)


def _requeue_in_flight(marker: dict[str, Any], view: JobView, now: float) -> bool:
    """The task asked for a requeue that SLURM has not carried out yet (see REQUEUE_GRACE_S)."""
    if marker.get("state") != State.REQUEUED or view.state == queue.GONE:
        return False
    restarted = view.restarts > int(marker.get("restarts", view.restarts))
    return not restarted and now - float(marker.get("time", now)) < REQUEUE_GRACE_S


def decide(run_dir: Path, marker: dict[str, Any], sub: dict[str, Any] | None, view: JobView | None,
           now: float | None = None) -> RunState:
    """The run's state from its markers (`job_status.json`, `job.json`) and its job's view.

    view: the job as the scheduler reports it (JobView(GONE) when it does not know it), None
    when the scheduler could not be asked. Pure: `run_state` does the reading.
    """
    now = time.time() if now is None else now
    if marker.get("state") == State.DONE:
        return RunState(run_dir, State.DONE, sub and str(sub.get("job_id")))
    if sub is None:
        return RunState(run_dir, State.NEW)
    job_id, cluster = str(sub["job_id"]), sub.get("cluster", "slurm")
    if view is None:
        return RunState(run_dir, State.PENDING, job_id, "SLURM unavailable: state unknown")
    if view.phase != "final":
        return _queued(run_dir, marker, job_id, view.phase, view.state)
    if marker.get("state") == State.FAILED:
        return RunState(run_dir, State.FAILED, job_id, str(marker.get("error", "")))
    if cluster == "debug":
        return RunState(run_dir, State.FAILED, job_id, "debug run did not finish")
    if _requeue_in_flight(marker, view, now):
        return RunState(run_dir, State.REQUEUED, job_id, f"requeue requested; SLURM state {view.state}")
    # over without writing 'done': killed, timed out for good, node failure, ...
    how = "left the queue" if view.state == queue.GONE else f"ended {view.state}"
    return RunState(run_dir, State.FAILED, job_id, f"job {job_id} {how} without finishing; logs: {sub.get('logs')}")


def _view(sub: dict[str, Any] | None, states: dict[str, JobView] | None) -> JobView | None:
    """The job of submission `sub` in the snapshot `states` (SLURM), or as this machine sees it (local)."""
    if sub is None:
        return None
    job_id, cluster = str(sub["job_id"]), sub.get("cluster", "slurm")
    if cluster == "slurm":
        return None if states is None else states.get(job_id, JobView(queue.GONE))
    if cluster == "local" and queue.local_job_alive(job_id):
        return JobView("RUNNING")
    return JobView(queue.GONE)  # debug: the run happened inside the submitting process


def run_state(run_dir: str | Path, states: dict[str, JobView] | None) -> RunState:
    """Combine the task's own status file with the queue (`states` from queue.squeue_states()).

    The markers are read after the snapshot was taken: a job that finished in between wrote
    'done' before it left the queue. A verdict of 'failed' from SLURM's side is checked again
    against a fresh look at the job and the markers read after it.
    """
    run_dir = Path(run_dir)
    sub = runstate.read_submission(run_dir)
    view = _view(sub, states)  # before the markers: a task writes 'done' before its job ends
    marker = runstate.read_status(run_dir) or {}
    verdict = decide(run_dir, marker, sub, view)
    if verdict.state != State.FAILED or sub.get("cluster", "slurm") != "slurm" or marker.get("state") == State.FAILED:
        return verdict
    fresh = queue.scontrol_state(str(sub["job_id"]))
    return decide(run_dir, runstate.read_status(run_dir) or {}, sub, fresh)


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
