"""Per-run state files: what was submitted (`job.json`) and how the task got on (`job_status.json`).

These JSON markers are the source of truth for `sweep status` and the idempotent re-submission:
the cluster here may have no accounting (no `sacct`), and a job that SLURM killed leaves no
result of its own, so "finished" is what the task itself wrote, and "gone from the queue
without writing done" means failed.
"""

from __future__ import annotations

import json
import socket
import time
from enum import Enum
from pathlib import Path
from typing import Any

from dinotrain.atomic import write_json
from dinotrain.run_layout import JOB_STATUS as STATUS
from dinotrain.run_layout import SUBMISSION


class State(str, Enum):
    """A run's state. A str, so JSON written before reads and compares the same ("done" == State.DONE),
    and json.dumps writes the bare value."""

    NEW = "new"  # no submission recorded
    PENDING = "pending"  # submitted, not started (or the queue could not be asked)
    RUNNING = "running"
    REQUEUED = "requeued"  # the task asked SLURM to requeue it (preemption, time limit)
    DONE = "done"
    FAILED = "failed"

    # the value, not "State.DONE", in f-strings and str() on every Python (3.12 changed the mixin's format)
    __str__ = str.__str__
    __format__ = str.__format__


TERMINAL = (State.DONE, State.FAILED)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json(path, data, indent=1, sort_keys=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a foreign or damaged file counts as absent; the run is then resubmitted


def record_submission(run_dir: str | Path, job_id: str, cluster: str, logs: str | Path) -> None:
    """Written by the submitting side right after sbatch answered."""
    _write_json(Path(run_dir) / SUBMISSION, {
        "job_id": str(job_id), "cluster": cluster, "logs": str(logs), "submitted_at": time.time(),
    })


def clear_status(run_dir: str | Path) -> None:
    """Before (re)submitting: a resubmitted failed run must not read as failed.

    Called before sbatch, never after: the job may start and write its status at once.
    """
    (Path(run_dir) / STATUS).unlink(missing_ok=True)


def read_submission(run_dir: str | Path) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / SUBMISSION)


def write_status(run_dir: str | Path, state: State, **extra: Any) -> None:
    """Written by rank 0 of the task: running | requeued | done | failed."""
    prev = read_status(run_dir) or {}
    data = {**prev, **extra, "state": state, "time": time.time(), "host": socket.gethostname()}
    if state == State.RUNNING:
        data["attempt"] = int(prev.get("attempt", 0)) + 1
    _write_json(Path(run_dir) / STATUS, data)


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / STATUS)
