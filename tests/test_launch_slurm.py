"""`dinotrain launch` against the real local SLURM: preemption, requeue and resume; a 2-task FSDP2 job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dinotrain.config import load_config
from launch import probe, runstate, status
from launch.submit import submit_run
from tests.services import wait_until

pytestmark = pytest.mark.slurm

# the tiny CPU trainer, as light as it goes: a step is ~1 s on a loaded 2-core machine
TINY = ["train.progress=false", "data.batch_size_per_gpu=2", "data.num_threads=1",
        "launch.cpus_per_task=1", "launch.time_minutes=30", "ssl.warmup_teacher_temp_steps=4"]
# a few-step run needs warm-ups that fit in it (the config refuses longer ones)
NO_WARMUP = ["optim.warmup_steps=0", "ssl.warmup_teacher_temp_steps=0", "optim.freeze_last_layer_steps=0"]

REPO = Path(__file__).resolve().parents[1]


def _probe_cfg(out: Path, *extra: str):
    return load_config(None, [f"output_dir={out}", "launch.cluster=slurm", "launch.cpus_per_task=1",
                              "launch.time_minutes=30", "train.max_steps=6", "train.checkpoint_every=2",
                              *NO_WARMUP, *extra])


def _steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["step"] for ln in lines if ln.strip()]


def _release_requeued(cluster, job_id: str, timeout: float = 90) -> None:
    """SLURM holds a requeued job for 120 s (Reason=BeginTime); let the test's job start again at once.

    The hold is set when the killed job finishes completing, which may come after the job
    already reads PENDING: keep releasing until it runs.
    """
    deadline = time.monotonic() + timeout
    seen_pending = False
    while time.monotonic() < deadline:
        out = cluster.run("squeue", "-h", "-j", job_id, "-o", "%T|%r", check=False).stdout.strip()
        state, _, reason = out.partition("|")
        if state == "PENDING":
            seen_pending = True
            if reason == "BeginTime":
                cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
        elif seen_pending and state in ("RUNNING", "COMPLETING", ""):
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} was not requeued and restarted within {timeout:.0f}s")


def _logs(job) -> str:
    folder = Path(str(job.paths.stdout)).parent
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.err")))


def test_preempted_job_requeues_and_resumes_without_repeating_steps(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv(probe.STEP_SECONDS_ENV, "0.5")
    run = tmp_path / "run"
    cfg = _probe_cfg(run, "train.max_steps=16", "train.checkpoint_every=2")
    job = submit_run(cfg, entry=probe.ENTRY)
    wait_until(lambda: (run / probe.CKPT).exists() and len(_steps(run)) >= 3, 90, "a checkpoint")
    job._interrupt()  # submitit's preemption: SIGTERM then USR2 -> checkpoint() -> scontrol requeue
    _release_requeued(slurm_cluster, job.job_id)
    (final,) = status.wait_for([run], timeout_s=120, poll_s=1)
    assert final.state == "done", f"{final}\n{_logs(job)}"
    assert runstate.read_status(run)["attempt"] == 2
    assert _steps(run) == list(range(1, 17))
    assert "Requeued job" in _logs(job) or "requeue" in _logs(job).lower()


@pytest.fixture(scope="module")
def cxr_folder(request, tmp_path_factory) -> Path:
    """Real chest X-ray shards: the shared fixture when present, else a small build of our own."""
    try:
        return Path(request.getfixturevalue("cxr_shards"))
    except pytest.FixtureLookupError:
        from shards.build import build_shards

        data = request.getfixturevalue("test_data")
        out = tmp_path_factory.mktemp("shards") / "cxr"
        files = sorted((data / "jsrt" / "images").glob("*.png"))[:24]
        build_shards([str(f) for f in files], str(out), name="cxr", size=64, workers=1, progress=False)
        return out


@pytest.mark.slow
def test_two_task_fsdp_job_is_requeued_and_resumes_to_the_last_step(slurm_cluster, cxr_folder, tmp_path):
    """dinotrain.train.run under SLURM, 2 tasks (FSDP2 over gloo), preempted after its first
    checkpoint: requeued by submitit, resumed by the trainer, every step logged exactly once."""
    from dinotrain.train.checkpoint import latest_checkpoint, list_checkpoints

    run = tmp_path / "run"
    cfg = load_config(REPO / "configs/pretrain/tiny_cpu.yaml", [
        f"output_dir={run}", f"data.sources=[{{name: cxr, path: {cxr_folder}}}]", "launch.tasks_per_node=2",
        "train.max_steps=6", "train.checkpoint_every=2", *TINY])
    job = submit_run(cfg)
    wait_until(lambda: latest_checkpoint(run) is not None or status.states_of([run])[0].state == "failed",
                240, "the first checkpoint")
    assert status.states_of([run])[0].state == "running", _logs(job)
    job._interrupt()  # preemption as SLURM signals it: SIGTERM, then USR2 -> checkpoint() -> requeue
    _release_requeued(slurm_cluster, job.job_id)
    (final,) = status.wait_for([run], timeout_s=300, poll_s=2)
    assert final.state == "done", f"{final}\n{_logs(job)}"
    st = runstate.read_status(run)
    assert st["attempt"] == 2 and st["world_size"] == 2
    assert _steps(run) == list(range(1, 7))  # resumed from a checkpoint: no step lost, none repeated
    assert [s for s, _ in list_checkpoints(run)][-1] == 6
    assert len(list((latest_checkpoint(run)).glob("*.distcp"))) == 2  # both ranks wrote their shard
    folder = Path(str(job.paths.stdout)).parent
    assert sorted(p.name for p in folder.glob("*_log.out")) == [f"{job.job_id}_{r}_log.out" for r in (0, 1)]
    assert "Caught signal SIGUSR2" in _logs(job)
