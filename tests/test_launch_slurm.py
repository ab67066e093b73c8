"""`dinotrain launch` against the real local SLURM: preemption, requeue and resume; 2-task FSDP2 jobs on one
node and across the fixture's two nodes."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from dinotrain.config import load_config
from dinotrain.train.meta_arch import LossTerms
from launch.jobs import probe, runstate, status
from launch.jobs.submit import submit_run
from tests.services import cpu_burners, wait_until

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


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in _metrics(run_dir)]


def _logs(job) -> str:
    folder = Path(str(job.paths.stdout)).parent
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.err")))


class StateWatcher:
    """Polls a run's state as `sweep status` does, as fast as it can, in a thread; keeps every change.

    `sweep` decides what to resubmit (new and failed runs) from the same `status.run_state`.
    """

    def __init__(self, run: Path) -> None:
        self.run, self.seen, self._stop = run, [], threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            (s,) = status.states_of([self.run])
            if not self.seen or self.seen[-1] != s.state:
                self.seen.append(s.state)
            self._stop.wait(0.05)

    def __enter__(self) -> StateWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_preempted_job_requeues_and_resumes_without_repeating_steps(slurm_cluster, tmp_path, monkeypatch):
    """Preemption, requeue, resume of a probe job on a machine whose CPUs are all busy, watched
    throughout: a requeued job is never reported failed (so `sweep` never resubmits it)."""
    monkeypatch.setenv(probe.STEP_SECONDS_ENV, "0.5")
    run = tmp_path / "run"
    cfg = _probe_cfg(run, "train.max_steps=16", "train.checkpoint_every=2")
    with cpu_burners(os.cpu_count() or 2, seconds=120), StateWatcher(run) as watcher:
        job = submit_run(cfg, entry=probe.ENTRY)
        wait_until(lambda: (run / probe.CKPT).exists() and len(_steps(run)) >= 3, 90, "a checkpoint")
        slurm_cluster.preempt(job)  # submitit's preemption: SIGTERM then USR2 -> checkpoint() -> scontrol requeue
        slurm_cluster.release_requeued(job.job_id)
        (final,) = status.wait_for([run], timeout_s=120, poll_s=1)
    assert final.state == "done", f"{final}\n{_logs(job)}"
    assert "requeued" in watcher.seen and "failed" not in watcher.seen, watcher.seen
    assert runstate.read_status(run)["attempt"] == 2
    assert _steps(run) == list(range(1, 17))
    assert "Requeued job" in _logs(job) or "requeue" in _logs(job).lower()


def test_rendezvous_host_is_the_node_address_when_node_names_do_not_resolve(slurm_cluster):
    from launch.jobs.task import node_address

    assert slurm_cluster.run("scontrol", "show", "hostnames", "n[1-2]").stdout.split() == ["n1", "n2"]
    assert node_address("n2") == "127.0.0.1"  # NodeAddr in the fixture's slurm.conf
    assert node_address("localhost") == "localhost"  # a resolvable name is kept as it is


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


def _two_rank_run(cxr_folder: Path) -> list[str]:
    """The 2-rank run of the requeue tests, as overrides of the tiny recipe (launch.* aside)."""
    return [f"data.sources=[{{name: cxr, path: {cxr_folder}}}]", "train.max_steps=6", "train.checkpoint_every=2",
            "train.deterministic=true", *TINY]



@pytest.fixture(scope="module")
def uninterrupted(cxr_folder, tmp_path_factory) -> dict[int, dict]:
    """The same 2-rank run, uninterrupted, outside SLURM (torchrun on this machine): its losses by step."""
    import subprocess
    import sys

    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dinotrain",
           "train", str(REPO / "configs/pretrain/tiny_cpu.yaml"), f"output_dir={run}", *_two_rank_run(cxr_folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return {r["step"]: r for r in _metrics(run)}


@pytest.mark.slow
@pytest.mark.parametrize("nodes,tasks_per_node", [(1, 2), (2, 1)], ids=["1node-2tasks", "2nodes-1task"])
def test_two_task_fsdp_job_is_requeued_and_resumes_to_the_last_step(slurm_cluster, cxr_folder, uninterrupted,
                                                                      tmp_path, nodes, tasks_per_node):
    """dinotrain.train.run under SLURM, 2 tasks (FSDP2 over gloo) on one node or one on each of two,
    preempted after its first checkpoint: requeued by submitit, resumed by the trainer, every step
    logged exactly once, with the losses of the same run left uninterrupted. Across nodes the
    rendezvous host comes from the job's node list, whose names (n1, n2) do not resolve: the
    address is SLURM's NodeAddr."""
    from dinotrain.train.checkpoint import latest_checkpoint, list_checkpoints

    run = tmp_path / "run"
    cfg = load_config(REPO / "configs/pretrain/tiny_cpu.yaml", [
        f"output_dir={run}", f"launch.nodes={nodes}", f"launch.tasks_per_node={tasks_per_node}",
        *_two_rank_run(cxr_folder)])
    job = submit_run(cfg)
    wait_until(lambda: latest_checkpoint(run) is not None or status.states_of([run])[0].state == "failed",
               240, "the first checkpoint")
    assert status.states_of([run])[0].state == "running", _logs(job)
    slurm_cluster.preempt(job, n_tasks=2)  # as SLURM signals it: SIGTERM, then USR2 -> checkpoint() -> requeue
    slurm_cluster.release_requeued(job.job_id)
    (final,) = status.wait_for([run], timeout_s=300, poll_s=2)
    assert final.state == "done", f"{final}\n{_logs(job)}"
    st = runstate.read_status(run)
    assert st["attempt"] == 2 and st["world_size"] == 2
    assert _steps(run) == list(range(1, 7))  # resumed from a checkpoint: no step lost, none repeated
    for got in _metrics(run):  # an exact resume: the preemption changed nothing
        for k in LossTerms.names():
            assert got[k] == pytest.approx(uninterrupted[got["step"]][k], rel=1e-6, abs=1e-7), (got["step"], k)
    assert [s for s, _ in list_checkpoints(run)][-1] == 6
    assert len(list((latest_checkpoint(run)).glob("*.distcp"))) == 2  # both ranks wrote their shard
    folder = Path(str(job.paths.stdout)).parent
    assert sorted(p.name for p in folder.glob("*_log.out")) == [f"{job.job_id}_{r}_log.out" for r in (0, 1)]
    logs = _logs(job)
    assert "Caught signal SIGUSR2" in logs
    # submitit's own record of where each rank ran, in both attempts: node=i(n) of n nodes
    for rank in (0, 1):
        node = rank if nodes == 2 else 0
        started = (folder / f"{job.job_id}_{rank}_log.out").read_text().count(
            f"node={node}({nodes}), global_rank={rank}(2)")
        assert started == 2, logs


@pytest.mark.slow
def test_preemption_between_checkpoints_saves_that_step_and_recomputes_none(slurm_cluster, cxr_folder,
                                                                             uninterrupted, tmp_path):
    """A 2-rank job, one task on each of the fixture's two nodes, preempted (SIGTERM, then USR2) at a
    step that is not a checkpoint step: every rank stops after the same step, one checkpoint of
    that step is written, the job requeues, and the requeued attempt starts from that very step:
    its losses are the uninterrupted run's at every step, and no step is computed twice."""
    from dinotrain.train.checkpoint import list_checkpoints

    run = tmp_path / "run"
    cfg = load_config(REPO / "configs/pretrain/tiny_cpu.yaml", [
        f"output_dir={run}", "launch.nodes=2", "launch.tasks_per_node=1", *_two_rank_run(cxr_folder),
        "train.checkpoint_every=100"])  # the only periodic checkpoint is the last step's
    job = submit_run(cfg)
    wait_until(lambda: (run / "metrics.jsonl").is_file() and len(_steps(run)) >= 1
               or status.states_of([run])[0].state == "failed", 240, "the first step")
    slurm_cluster.preempt(job, n_tasks=2)
    wait_until(lambda: slurm_cluster.run("squeue", "-h", "-j", str(job.job_id), "-o", "%T",
                                         check=False).stdout.strip() == "PENDING", 120, "the requeue")
    computed = _steps(run)  # what the first attempt computed, before the second one starts
    saved = [s for s, _ in list_checkpoints(run)]
    slurm_cluster.release_requeued(job.job_id)
    (final,) = status.wait_for([run], timeout_s=300, poll_s=2)
    assert final.state == "done", f"{final}\n{_logs(job)}"
    assert runstate.read_status(run)["attempt"] == 2
    assert len(saved) == 1 and 1 <= saved[0] < 6, (saved, _logs(job))  # a step between checkpoints
    assert computed == list(range(1, saved[0] + 1))  # steps computed twice: max(computed) - saved = 0
    folder = Path(str(job.paths.stdout)).parent
    logs = "\n".join(p.read_text() for p in sorted(folder.glob("*.err")))  # both attempts, whole
    assert f"saved at step {saved[0]} (ckpt/step_{saved[0]:07d})" in logs
    assert f"resumed from step {saved[0]} (ckpt/step_{saved[0]:07d})" in logs
    assert _steps(run) == list(range(1, 7))
    for got in _metrics(run):
        for k in LossTerms.names():
            assert got[k] == pytest.approx(uninterrupted[got["step"]][k], rel=1e-6, abs=1e-7), (got["step"], k)
