"""End-to-end training runs on real JSRT shards, as users start them (`dinotrain train`, torchrun).

One uninterrupted 2-process FSDP2 run (gloo) is the reference: its metrics, checkpoints and
teacher export are checked, a kill -9'd twin must resume onto exactly its losses, and a
1-process run must resume from its 2-rank checkpoint (resharding).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dinotrain.train.meta_arch import LossTerms

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STEPS = 10
pytestmark = pytest.mark.slow


def write_config(path: Path, shards: Path, out: Path, **train) -> Path:
    cfg = {
        "output_dir": str(out),
        "data": {"sources": [{"name": "jsrt", "path": str(shards)}], "batch_size_per_gpu": 4,
                 "global_crops_size": 56, "local_crops_size": 28, "local_crops_number": 2,
                 "num_threads": 1},
        "model": {"arch": "vit_tiny", "img_size": 56, "drop_path_rate": 0.1},
        "ssl": {"head_n_prototypes": 256, "head_hidden_dim": 128, "head_bottleneck_dim": 64,
                "warmup_teacher_temp_steps": 4},
        "optim": {"warmup_steps": 3, "freeze_last_layer_steps": 2, "lr": 0.004},
        "train": {"max_steps": STEPS, "log_every": 1, "checkpoint_every": 5, "export_every": 5,
                  "deterministic": True, "progress": False, **train},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    return e


def command(cfg: Path, nproc: int, *overrides: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "dinotrain", "train", str(cfg), *overrides]
    return [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "dinotrain", "train",
            str(cfg), *overrides]


def train(cfg: Path, nproc: int, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(cfg, nproc, *overrides), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def train_with_nan(cfg: Path, nan_step: int, *overrides: str) -> subprocess.CompletedProcess:
    """One-process `dinotrain train` whose loss is NaN at step `nan_step` (tests/nan_train.py)."""
    cmd = [sys.executable, str(REPO / "tests" / "nan_train.py"), str(nan_step), "train", str(cfg), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)


def losses_by_step(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r for r in rows}  # a resumed run rewrites the steps after its checkpoint


@pytest.fixture(scope="module")
def reference_run(cxr_shards, tmp_path_factory):
    """The uninterrupted 2-process run: STEPS steps, checkpoints and exports at 5 and 10."""
    base = tmp_path_factory.mktemp("train_ref")
    cfg = write_config(base / "cfg.yaml", cxr_shards, base / "run")
    res = train(cfg, 2)
    assert res.returncode == 0, res.stderr[-4000:]
    return base / "run"


def test_two_process_run_writes_metrics_checkpoints_and_exports(reference_run):
    rows = losses_by_step(reference_run)
    assert sorted(rows) == list(range(1, STEPS + 1))
    for r in rows.values():
        for k in LossTerms.names():
            assert r[k] is not None and math.isfinite(r[k]), (r["step"], k)
        assert r["world_size"] == 2 and r["images_per_s"] > 0 and r["step_time_s"] > 0
        for k in ("lr", "wd", "momentum", "teacher_temp", "grad_norm_backbone", "cls_std", "cls_effective_rank",
                  "teacher_entropy", "time_data_s", "peak_memory_gb", "epochs/jsrt"):
            assert k in r, k
    assert rows[1]["last_layer_lr"] == 0.0 and rows[STEPS]["last_layer_lr"] > 0
    assert rows[1]["teacher_temp"] == pytest.approx(0.04) and rows[STEPS]["teacher_temp"] == pytest.approx(0.07)
    # 2 ranks x 4 images x STEPS steps over 48 images
    assert rows[STEPS]["epochs/jsrt"] == pytest.approx(STEPS * 4 / 48, rel=0.01) or \
        rows[STEPS]["epochs/jsrt"] == pytest.approx(STEPS * 8 / 48, rel=0.01)
    cfg = yaml.safe_load((reference_run / "config.yaml").read_text())
    assert cfg["model"]["arch"] == "vit_tiny" and cfg["train"]["max_steps"] == STEPS
    ckpts = sorted(p.name for p in (reference_run / "ckpt").iterdir())
    assert ckpts == ["step_0000005", "step_0000010"]
    assert {p.name for p in (reference_run / "ckpt" / "step_0000010").glob("rank_*.json")} == \
        {"rank_00000.json", "rank_00001.json"}
    exports = sorted(p.name for p in (reference_run / "export").iterdir())
    assert exports == ["latest", "step_0000005", "step_0000010"]
    for name in ("hf/config.json", "hf/model.safetensors", "dinov2.safetensors", "dino_head.safetensors"):
        assert (reference_run / "export" / "latest" / name).is_file(), name


def test_exported_teacher_loads_with_from_hf_and_transformers(reference_run):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from dinotrain.models.convert import from_hf, load_dino_head
    from dinotrain.run_teacher import load_teacher

    latest = reference_run / "export" / "latest"
    ours = from_hf(latest / "hf").eval()
    hf = transformers.AutoModel.from_pretrained(str(latest / "hf")).eval()
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours.forward_features(x)["x_norm_clstoken"]
        b = hf(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the export is the checkpoint's teacher, and the teacher moved away from the student's init
    sd, model_cfg = load_teacher(reference_run)
    dv2 = load_file(str(latest / "dinov2.safetensors"))
    assert model_cfg.arch == "vit_tiny" and set(sd) == set(dv2)
    for k in sd:
        torch.testing.assert_close(sd[k], dv2[k], rtol=0, atol=0)
    first = load_file(str(reference_run / "export" / "step_0000005" / "dinov2.safetensors"))
    assert any(not torch.equal(first[k], dv2[k]) for k in dv2)
    head = load_dino_head(latest / "dino_head.safetensors")
    assert head.last_layer.out_features == 256


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_kill9_then_resume_reproduces_the_uninterrupted_losses(reference_run, cxr_shards, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(command(cfg, 2), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed_at = None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            done = (run_dir / "ckpt" / "step_0000005" / "meta.json").is_file()
            steps = losses_by_step(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}
            if done and any(s > 5 for s in steps):
                # kill -9 the whole job, as a node failure would: torchrun's workers run in sessions
                # of their own, so its process group alone would leave them training
                workers = _children(proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                killed_at = max(steps)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_at is not None and killed_at < STEPS, "the run ended before it could be killed"
    assert not (run_dir / "ckpt" / "step_0000010").exists()

    res = train(cfg, 2)
    assert res.returncode == 0, res.stderr[-4000:]
    want, got = losses_by_step(reference_run), losses_by_step(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(6, STEPS + 1):
        for k in LossTerms.names():
            assert got[step][k] == pytest.approx(want[step][k], rel=1e-6, abs=1e-7), (step, k)


def test_two_rank_checkpoint_resumes_on_one_rank(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    shutil.rmtree(run_dir / "ckpt" / "step_0000010")
    cfg = yaml.safe_load((reference_run / "config.yaml").read_text())
    cfg["output_dir"] = str(run_dir)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    # also exercises the tolerated non-finite step: step 6 is made NaN and skipped, 7 trains
    res = train_with_nan(cfg_path, 6, "train.max_steps=7", "train.max_nonfinite_steps=1")
    assert res.returncode == 0, res.stderr[-4000:]
    assert "step 6: loss term 'dino_global_crops_loss' is not finite" in res.stderr and "skipping" in res.stderr
    rows = losses_by_step(run_dir)
    assert sorted(rows) == [1, 2, 3, 4, 5, 7]
    assert rows[7]["world_size"] == 1 and math.isfinite(rows[7]["total_loss"]) and rows[7]["nonfinite_steps"] == 1
    assert "resharded" in res.stderr
    # the resumed run continued from the trained state, not from a fresh init: its loss is
    # close to the 2-rank run's loss at the same step, far from the step-1 loss
    ref = losses_by_step(reference_run)
    assert abs(rows[7]["total_loss"] - ref[7]["total_loss"]) < abs(ref[1]["total_loss"] - ref[7]["total_loss"])
    assert (run_dir / "ckpt" / "step_0000007" / "meta.json").is_file()
    assert json.loads((run_dir / "ckpt" / "step_0000007" / "meta.json").read_text())["world_size"] == 1


def test_one_rank_checkpoint_resumes_on_two_ranks(cxr_shards, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", checkpoint_every=2, export_every=0)
    short = ("optim.warmup_steps=2", "ssl.warmup_teacher_temp_steps=2")  # warm-ups must fit in the first run
    first = train(cfg, 1, "train.max_steps=2", *short)
    assert first.returncode == 0, first.stderr[-4000:]
    meta = tmp_path / "run" / "ckpt" / "step_0000002" / "meta.json"
    assert json.loads(meta.read_text())["world_size"] == 1
    res = train(cfg, 2, "train.max_steps=4", *short)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resharded" in res.stderr
    rows = losses_by_step(tmp_path / "run")
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[2]["world_size"] == 1 and rows[4]["world_size"] == 2
    assert all(math.isfinite(rows[s]["total_loss"]) for s in rows)
    assert json.loads((tmp_path / "run" / "ckpt" / "step_0000004" / "meta.json").read_text())["world_size"] == 2


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(cxr_shards, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", checkpoint_every=2, max_steps=4,
                       export_every=0)
    res = train_with_nan(cfg, 3)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "step 3: loss term 'dino_global_crops_loss' is not finite" in res.stderr
    assert "step_0000002" in res.stderr  # the message names the checkpoint to go back to
    ckpts = sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir())
    assert ckpts == ["step_0000002"]
    assert sorted(losses_by_step(tmp_path / "run")) == [1, 2]
    assert not (tmp_path / "run" / "export").exists()


def _resume_copy(reference_run: Path, run_dir: Path) -> Path:
    """A copy of the reference run as if it had stopped after its step-5 checkpoint; returns its config."""
    shutil.copytree(reference_run, run_dir)
    shutil.rmtree(run_dir / "ckpt" / "step_0000010")
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(ln + "\n" for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= 5))
    cfg = yaml.safe_load((reference_run / "config.yaml").read_text())
    cfg["output_dir"] = str(run_dir)
    cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def test_two_node_torchrun_resumes_a_one_node_run(reference_run, tmp_path):
    """The reference run (one node, 2 processes) resumed from its step-5 checkpoint by two torchrun
    launchers, one per "node", that find each other through c10d rendezvous. Its steps must equal
    those of the same resume on one node (2 processes): which launcher a rank sits in changes nothing."""
    from tests.services import free_port

    one_node = train(_resume_copy(reference_run, tmp_path / "one"), 2, "train.max_steps=7")
    assert one_node.returncode == 0, one_node.stderr[-4000:]
    cfg_path = _resume_copy(reference_run, tmp_path / "two")
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = [
        subprocess.Popen([str(VENV_BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                          f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-node-test", "--max-restarts=0",
                          # one launcher hosts the rendezvous store, as the first node of a job would
                          f"--rdzv-conf=is_host={str(host).lower()},join_timeout=300",
                          "-m", "dinotrain", "train", str(cfg_path), "train.max_steps=7"],
                         cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for host in (True, False)]
    try:
        errs = [p.communicate(timeout=600)[1] for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(e[-3000:] for e in errs)
    want, got = losses_by_step(tmp_path / "one"), losses_by_step(tmp_path / "two")
    assert sorted(got) == sorted(want) == list(range(1, 8))
    ref = losses_by_step(reference_run)
    # step 6 ran on the reference's own state (max_steps=7 changes the schedules from its update on):
    # exactly the reference's losses, in another folder (an export at step 5 once moved the RNG)
    for k in LossTerms.names():
        assert got[6][k] == pytest.approx(ref[6][k], rel=1e-6, abs=1e-7), k
    for step in (6, 7):
        assert got[step]["world_size"] == 2  # one process per launcher
        for k in LossTerms.names():
            assert got[step][k] == pytest.approx(want[step][k], rel=1e-6, abs=1e-7), (step, k)
        # continued from the trained state, not from a fresh init
        assert abs(got[step]["total_loss"] - ref[step]["total_loss"]) < \
            abs(ref[1]["total_loss"] - ref[step]["total_loss"])
    assert {p.name for p in (tmp_path / "two" / "ckpt" / "step_0000007").glob("rank_*.json")} == \
        {"rank_00000.json", "rank_00001.json"}


def _worker_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (a child of the launcher with RANK=rank)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (d / "environ").read_bytes().split(b"\0") if ppid == launcher_pid else []
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(d.name)
    return None


def test_sigterm_to_one_rank_stops_both_at_one_step_and_the_resume_loses_nothing(reference_run, cxr_shards,
                                                                                  tmp_path):
    """SIGTERM reaches rank 1 only, at a step that is not a checkpoint step: both ranks stop after
    the same step (their flags meet in one all-reduce), write one checkpoint of it and exit 0; the
    resumed run's losses are the uninterrupted run's at every step."""
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", checkpoint_every=100)
    run_dir = tmp_path / "run"
    err_path = tmp_path / "first.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(command(cfg, 2), cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        deadline = time.time() + 600
        while not ((run_dir / "metrics.jsonl").is_file() and losses_by_step(run_dir)):
            assert proc.poll() is None and time.time() < deadline, err_path.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(_worker_pid(proc.pid, 1), signal.SIGTERM)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = err_path.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    stopped = max(losses_by_step(run_dir))
    assert 1 <= stopped < STEPS  # not the last step, the only checkpoint step at checkpoint_every=100
    assert f"saved at step {stopped} (ckpt/step_{stopped:07d})" in stderr
    assert [p.name for p in (run_dir / "ckpt").iterdir()] == [f"step_{stopped:07d}"]
    assert {p.name for p in (run_dir / "ckpt" / f"step_{stopped:07d}").glob("rank_*.json")} == \
        {"rank_00000.json", "rank_00001.json"}
    res = train(cfg, 2)
    assert res.returncode == 0, res.stderr[-4000:]
    assert f"resumed from step {stopped} (ckpt/step_{stopped:07d})" in res.stderr
    want, got = losses_by_step(reference_run), losses_by_step(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for k in LossTerms.names():
            assert got[step][k] == pytest.approx(want[step][k], rel=1e-6, abs=1e-7), (step, k)
