"""`dinotrain demo`: its plan, its configs against the real schema and eval spec parser, and the chain."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch.demo import run as demo_run
from launch.demo.synthetic import make_corpus

REPO = Path(__file__).resolve().parents[1]


def test_plan_scales_with_minutes_and_honours_overrides():
    small, default, big = demo_run.plan(3), demo_run.plan(8), demo_run.plan(30)
    assert small.steps < default.steps < big.steps
    assert small.images <= default.images < big.images
    assert all(p.images % 3 == 0 for p in (small, default, big))
    exact = demo_run.plan(8, steps=7, images=61)
    assert exact.steps == 7 and exact.images == 60
    with pytest.raises(ValueError, match="--minutes"):
        demo_run.plan(0)


def test_train_overrides_validate_against_the_schema(tmp_path):
    from dinotrain.config import load_config

    p = demo_run.plan(8, steps=40)
    cfg = load_config(None, demo_run.train_overrides(tmp_path / "run", tmp_path / "shards", p, 2, 5))
    assert cfg.launch.cluster == "local" and cfg.launch.tasks_per_node == 2
    assert cfg.train.max_steps == 40 and cfg.train.seed == 5 and cfg.data.seed == 5
    assert cfg.model.arch == demo_run.ARCH and cfg.data.sources[0].path == str(tmp_path / "shards")
    assert cfg.train.checkpoint_every < cfg.train.max_steps  # the budget cut needs an earlier checkpoint
    assert demo_run.EVAL_RESOLUTION % cfg.model.patch_size == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("demo") / "corpus", n=90, seed=0, size=48)


def test_eval_specs_select_the_right_rows(corpus):
    from dinotrain.eval.specs import load_task, spec_from_dict

    for spec, probe, metric, _ in demo_run.eval_specs("corpus"):
        task = load_task(spec_from_dict(spec, source="test"), corpus.root.parent)
        modalities = set(task.column("modality"))
        if spec["name"] == "modality":
            assert modalities == {"xr_chest", "us_breast", "ct_chest"} and len(task.rows) == 90
        else:
            assert modalities == {spec["where"]["modality"][0]} and len(task.rows) == 30
        assert len(task.indices("train")) > 0 and len(task.indices("test")) > 0
        assert probe in spec.get("probes", [probe]) and metric in ("auroc", "r2")


def test_corpus_is_reused_and_a_new_one_invalidates_what_was_built_from_it(tmp_path):
    root = tmp_path / "corpus"
    first = demo_run.build_corpus(root, 9, seed=0, progress=False)
    png = root / "xr_chest" / "xr_chest_00000.png"
    stamp = png.stat().st_mtime_ns
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    again = demo_run.build_corpus(root, 9, seed=0, progress=False)
    assert again == first and png.stat().st_mtime_ns == stamp  # not rewritten
    assert (tmp_path / "shards" / "manifest.json").is_file()
    other = demo_run.build_corpus(root, 12, seed=0, progress=False)
    assert other.n_synthetic == 12
    assert not (tmp_path / "shards").exists()  # shards of the old corpus are gone


def test_task_specs_are_written_as_yaml(tmp_path):
    from dinotrain.eval.specs import load_spec

    paths = demo_run.write_task_specs(tmp_path, "corpus", seed=3)
    specs = [load_spec(p) for p in paths]
    assert [s.name for s in specs] == [s[0]["name"] for s in demo_run.eval_specs("corpus")]
    assert all(s.seed == 3 and s.dataset == "corpus" for s in specs)


def test_probe_rows_pair_models_per_task():
    recs = []
    for model, v in (("run", 0.8), ("random:vit_tiny:0", 0.6)):
        recs += [
            {"model": model, "task": "xr_age", "kind": "ridge", "metric": "r2", "value": v,
             "ci_low": v - 0.1, "ci_high": v + 0.1},
            {"model": model, "task": "xr_age", "kind": "ridge", "metric": "mae", "value": 9.0},
            {"model": model, "task": "xr_sex", "kind": "linear", "metric": "auroc", "value": v / 2,
             "ci_low": float("nan"), "ci_high": float("nan")},
        ]
    rows = demo_run.probe_rows(recs, "run", "random:vit_tiny:0")
    assert [(r.task, r.metric) for r in rows] == [("xr_age", "ridge r2"), ("xr_sex", "linear auroc")]
    assert rows[0].ssl == 0.8 and rows[0].random == 0.6 and rows[0].ssl_ci == pytest.approx((0.7, 0.9))
    assert rows[1].ssl_ci is None and rows[1].delta == pytest.approx(0.1)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The real chain: shards build, 2-process training via the local executor, eval, report."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "dinotrain", "demo", "--out", str(out), "--steps", "3", "--images", "60"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("loss_curves.png", "probes.png", "samples.png", "training_crops.png", "REPORT.md", "results.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["modalities"]["xr_chest"] == 20
    rejected = {Path(json.loads(line)["source"]).name for line in
                (out / "shards" / "rejects.jsonl").read_text().splitlines()}
    assert rejected == {"MR_truncated.dcm", "rtplan.dcm", "no_meta.dcm"}
    steps = [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3
    records = json.loads((out / "results.json").read_text())["records"]
    models = {r["model"] for r in records}
    # the baseline is the run's own starting network (its recipe and seed), named as such
    assert models == {str(out / "run"), f"random:{out / 'run'}"}
    baseline = "vit_tiny initialised by the run's recipe (LayerScale 0.1, seed 0), untrained"
    assert f"step-0 init: {baseline}" in proc.stdout and f"step-0 init: {baseline}" in (out / "REPORT.md").read_text()
    assert json.loads((out / "results.json").read_text())["baseline"] == baseline
    assert {r["task"] for r in records} == {s[0]["name"] for s in demo_run.eval_specs("corpus")}
    # tiny test splits may leave one class (AUROC undefined), but every MAE is a number
    assert all(np.isfinite(r["value"]) for r in records if r["metric"] == "mae")
    table = proc.stdout[proc.stdout.index("SSL pretrained"):]
    assert all(s[0]["name"] in table for s in demo_run.eval_specs("corpus"))
    assert "stopped by" not in proc.stdout and "synthetic" in proc.stdout
    assert "time budget spent" not in proc.stdout + proc.stderr
    assert "collapse monitor: no warning" in proc.stdout
    latest = out / "run" / "export" / "latest"
    assert (latest / "dinov2.safetensors").is_file() and (latest / "hf" / "config.json").is_file()
    # a finished demo run again repairs a missing export (the rerun said done and left none)
    shutil.rmtree(out / "run" / "export")
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (latest / "dinov2.safetensors").is_file() and "3 of 3 steps" in again.stdout
    assert_export_is_the_checkpoint(out / "run", 3)
    # an export cut while it copied to latest/ (an older latest/ beside the new step's folder) is redone
    (latest / "dinov2.safetensors").write_bytes(b"an older export")
    assert demo_run.ensure_export(out / "run", 3) == latest
    assert_export_is_the_checkpoint(out / "run", 3)


def assert_export_is_the_checkpoint(run: Path, step: int) -> None:
    """export/latest and export/step_N hold the teacher of checkpoint N, loadable as an HF model."""
    from safetensors.torch import load_file

    from dinotrain.models.convert import from_hf
    from dinotrain.run_teacher import load_teacher

    assert (run / "export" / f"step_{step:07d}").is_dir()
    exported = load_file(str(run / "export" / "latest" / "dinov2.safetensors"))
    teacher, _ = load_teacher(run)  # the newest checkpoint
    assert set(exported) == set(teacher) and all(torch.equal(exported[k], teacher[k]) for k in teacher)
    hf = from_hf(run / "export" / "latest" / "hf").state_dict()
    assert torch.equal(hf["pos_embed"], teacher["pos_embed"])
    # and it loads as microsoft/rad-dino is consumed: AutoImageProcessor at the run's crop size + AutoModel
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    from dinotrain.config import load_config

    size = int(load_config(run / "config.yaml").data.global_crops_size)
    processor = AutoImageProcessor.from_pretrained(run / "export" / "latest" / "hf")
    pixels = processor(images=Image.new("L", (90, 70), 128), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, size, size)
    with torch.no_grad():
        cls = AutoModel.from_pretrained(run / "export" / "latest" / "hf")(pixel_values=pixels).pooler_output
    assert cls.shape[0] == 1 and torch.isfinite(cls).all()


@pytest.mark.slow
def test_demo_with_a_tiny_budget_still_exports_and_reports(tmp_path):
    """A budget spent before training ends: fewer steps than planned, said once; the checkpoint
    is evaluated and exported; the table printed."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "dinotrain", "demo", "--out", str(out), "--minutes", "1.4", "--images", "60"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 0, terminal[-3000:]
    planned = demo_run.plan(1.4).steps
    spent = re.search(r"time budget spent at step (\d+) of (\d+): training stopped, its checkpoint of step (\d+)",
                      terminal)
    assert spent and int(spent.group(2)) == planned and int(spent.group(1)) < planned, terminal[-3000:]
    ckpt = int(spent.group(3))
    assert "stopped by the 1.4-minute budget" in proc.stdout and f"checkpoint of step {ckpt}" in proc.stdout
    assert "SSL pretrained" in proc.stdout and (out / "REPORT.md").is_file()
    assert_export_is_the_checkpoint(out / "run", ckpt)
    assert "Traceback" not in terminal
