"""A run's state from its markers and SLURM's view of its job (no cluster needed: `status.decide` is pure).

The SLURM lines below are what squeue / scontrol 22.05 printed on the test cluster.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from launch.jobs import queue, status
from launch.jobs.queue import GONE, JobView

SQUEUE = "2_2|COMPLETED|0|\n2_4|PENDING|0|\n1|RUNNING|1|\n3|CANCELLED|0|\n"
SCONTROL = ("JobId=1 JobName=job2.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 "
            "Account=(null) QOS=(null) JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=1 "
            "BatchFlag=1 Reboot=0 ExitCode=0:0")
SUB = {"job_id": "7", "cluster": "slurm", "logs": "/runs/a/jobs/7"}
RUN = Path("/runs/a")


def test_squeue_and_scontrol_lines_parse_to_state_and_restarts():
    jobs = queue.parse_squeue(SQUEUE)
    assert jobs == {"2_2": JobView("COMPLETED", 0), "2_4": JobView("PENDING", 0), "1": JobView("RUNNING", 1),
                    "3": JobView("CANCELLED", 0)}
    assert queue.parse_scontrol(SCONTROL) == JobView("PENDING", 1)
    assert queue.parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None


@pytest.mark.parametrize("state,phase", [
    ("PENDING", "pending"), ("REQUEUED", "pending"), ("REQUEUE_HOLD", "pending"), ("CONFIGURING", "pending"),
    ("SOME_FUTURE_STATE", "pending"), ("RUNNING", "running"), ("COMPLETING", "running"),
    ("COMPLETED", "final"), ("CANCELLED", "final"), ("FAILED", "final"), ("PREEMPTED", "final"),
    ("NODE_FAIL", "final"), ("TIMEOUT", "final"), (GONE, "final")])
def test_only_final_states_end_a_job_and_unknown_ones_count_as_queued(state, phase):
    assert JobView(state).phase == phase


def _decide(marker: dict, view: JobView | None, **kw) -> status.RunState:
    return status.decide(RUN, marker, dict(SUB), view, **kw)


def test_requeued_run_is_never_failed_while_slurm_has_not_finished_the_requeue():
    now = time.time()
    asked = {"state": "requeued", "attempt": 1, "restarts": 0, "time": now - 5}
    # the steps of a requeue as SLURM shows them: none of them fails the run
    for view in (JobView("RUNNING", 0), JobView("COMPLETING", 1), JobView("REQUEUED", 1),
                 JobView("PENDING", 1), JobView("REQUEUE_HOLD", 1), JobView("CONFIGURING", 1)):
        assert _decide(asked, view, now=now).state == "requeued", view
    # SLURM can requeue a job from a final state: until its restart count moves, that is in flight
    got = _decide(asked, JobView("CANCELLED", 0), now=now)
    assert got.state == "requeued" and "CANCELLED" in got.detail
    # ... but a requeued attempt that ended, or a request SLURM ignored for long, is a failure
    assert _decide(asked, JobView("FAILED", 1), now=now).state == "failed"
    assert _decide(asked, JobView("CANCELLED", 0), now=now + status.REQUEUE_GRACE_S).state == "failed"
    assert _decide(asked, JobView(GONE), now=now).state == "failed"


def test_a_job_still_queued_is_not_failed_even_with_a_failed_marker():
    failed = {"state": "failed", "error": "RuntimeError: boom"}
    assert _decide(failed, JobView("COMPLETING", 0)).state == "running"  # not resubmitted while it completes
    got = _decide(failed, JobView("FAILED", 0))
    assert got.state == "failed" and got.detail == "RuntimeError: boom"


def test_unknown_slurm_state_is_queued_and_shown():
    got = _decide({"state": "running", "attempt": 1}, JobView("SOME_FUTURE_STATE", 0))
    assert got.state == "pending" and got.detail == "SLURM state SOME_FUTURE_STATE"
    assert _decide({}, JobView("RUNNING", 0)) == status.RunState(RUN, "running", "7", "")


def test_done_marker_wins_and_silence_after_the_end_is_failure():
    assert _decide({"state": "done"}, JobView("COMPLETED", 0)).state == "done"
    assert _decide({"state": "done"}, JobView(GONE)).state == "done"
    got = _decide({"state": "running", "attempt": 1}, JobView("TIMEOUT", 0))
    assert got.state == "failed" and got.detail.startswith("job 7 ended TIMEOUT without finishing")
    got = _decide({"state": "running", "attempt": 1}, JobView(GONE))
    assert got.state == "failed" and "left the queue" in got.detail
    # no answer from SLURM: unknown, never failed
    assert _decide({"state": "running"}, None).state == "pending"
    assert status.decide(RUN, {}, None, None).state == "new"


def test_run_states_are_an_enum_that_reads_and_writes_the_old_json(tmp_path):
    from launch.jobs import runstate
    from launch.jobs.runstate import State

    # a marker written before the enum (a bare string) decides the same as one written now
    assert status.decide(RUN, {"state": "done"}, SUB, None).state is State.DONE
    runstate.write_status(tmp_path, State.FAILED, error="x")
    assert '"state": "failed"' in (tmp_path / runstate.STATUS).read_text()
    assert runstate.read_status(tmp_path)["state"] == State.FAILED
    assert f"{State.REQUEUED:<9}|" == "requeued |" and str(State.NEW) == "new"
    assert status.decide(RUN, {}, SUB, JobView("RUNNING")).state is State.RUNNING
