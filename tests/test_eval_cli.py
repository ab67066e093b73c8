"""`dinotrain eval` end to end: real images, a random-init vit_tiny, cached features, results files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dinotrain.cli import main as cli_main
from dinotrain.eval.loading import load_model

KEYS = {"model", "task", "kind", "metric", "split", "value", "ci_low", "ci_high", "n"}
TASKS = "jsrt_nodule,jsrt_anatomy,pneumoniamnist"


def run_cli(tmp_path, test_data, models, tasks=TASKS, extra=()):
    return cli_main(["eval", *models, "--tasks", tasks, "--data", str(test_data), "--out", str(tmp_path / "out"),
                     "--resolution", "112", "--max-samples", "48", "--bootstrap", "40", "--seg-steps", "120",
                     "--batch-size", "16", "--no-progress", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), *extra])


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, test_data):
    tmp = tmp_path_factory.mktemp("eval_cli")
    rc = run_cli(tmp, test_data, ["random:vit_tiny", "random:vit_tiny:1"])
    assert rc == 0
    return tmp, json.loads((tmp / "out" / "results.json").read_text())


@pytest.mark.slow
def test_results_files_hold_every_metric_with_ci(two_models, test_data):
    tmp, res = two_models
    assert res["models"] == ["random:vit_tiny", "random:vit_tiny:1"]
    assert res["tasks"] == TASKS.split(",") and res["settings"]["resolution"] == 112
    recs = res["results"]
    classification = ("auroc", "auprc", "accuracy")
    assert recs and all(set(r) == (KEYS | {"chance"} if r["metric"] in classification else KEYS) for r in recs)
    # chance of an uninformative predictor: AUROC 0.5, AUPRC the prevalence, accuracy the majority rate
    nodule = {r["metric"]: r["chance"] for r in recs if r["task"] == "jsrt_nodule" and r["kind"] == "linear"}
    assert nodule["auroc"] == 0.5 and 0 < nodule["auprc"] < 1
    assert nodule["accuracy"] == pytest.approx(max(nodule["auprc"], 1 - nodule["auprc"]))  # binary: p vs 1 - p
    for m in res["models"]:
        mine = {(r["task"], r["kind"], r["metric"]) for r in recs if r["model"] == m}
        assert {("jsrt_nodule", "knn", "auroc"), ("jsrt_nodule", "linear", "auprc"),
                ("jsrt_anatomy", "linear_head", "dice_lungs"),
                ("jsrt_anatomy", "constant_mask", "dice_clavicles"), ("pneumoniamnist", "linear", "auroc")} <= mine
    for r in recs:
        assert r["split"] == "test" and r["n"] > 0 and math.isfinite(r["value"])
        if r["ci_low"] is not None:
            assert r["ci_low"] - 1e-9 <= r["ci_high"]
        if r["metric"] in ("auroc", "auprc", "accuracy") or r["metric"].startswith("dice"):
            assert 0 <= r["value"] <= 1
    # the two seeds are different models: different numbers somewhere
    val = {(r["model"], r["task"], r["kind"], r["metric"]): r["value"] for r in recs}
    assert any(val[("random:vit_tiny", *k[1:])] != v for k, v in val.items() if k[0] == "random:vit_tiny:1")
    md = (tmp / "out" / "results.md").read_text()
    assert "## jsrt_anatomy" in md and "| `random:vit_tiny` | `random:vit_tiny:1` |" in md
    assert (tmp / "out" / "results.png").stat().st_size > 5000


@pytest.mark.slow
def test_lung_head_on_random_features_beats_a_constant_full_mask(two_models, test_data):
    """The issue's sanity check: even random-init patch tokens carry enough (intensity) for a
    linear head to beat predicting 'lung everywhere'; the position-prior mask is reported too."""
    from dinotrain.eval.specs import load_spec, load_task
    from dinotrain.eval.tasks import EvalSettings, prepare_targets

    _, res = two_models
    task = load_task(load_spec("jsrt_anatomy"), test_data, max_samples=48)
    t = prepare_targets(task, EvalSettings(resolution=112, patch_size=14))
    lungs = t.masks[task.indices("test"), 0]
    full = float(np.mean(2 * lungs.sum((1, 2)) / (lungs[0].size + lungs.sum((1, 2)))))
    head = next(r for r in res["results"] if r["model"] == "random:vit_tiny" and r["kind"] == "linear_head"
                and r["metric"] == "dice_lungs")
    assert head["value"] > full + 0.15, (head["value"], full)


@pytest.mark.slow
def test_cache_is_reused_and_results_reproduce(two_models, test_data, monkeypatch):
    tmp, res = two_models
    from dinotrain.eval.specs import load_spec, load_task

    files = sorted((tmp / "cache").rglob("*.safetensors"))
    # one file per model and sample: images shared by several tasks are extracted once
    keys = set().union(*(load_task(load_spec(t), test_data, 48).keys for t in TASKS.split(",")))
    assert len(keys) < 3 * 48 and len(files) == 2 * len(keys)
    before = {p: p.stat().st_mtime_ns for p in files}
    import dinotrain.eval.features as F

    def fail(*a, **k):
        raise AssertionError("features were recomputed although cached")

    monkeypatch.setattr(F, "preprocess", fail)
    rc = run_cli(tmp, test_data, ["random:vit_tiny:1"], extra=["--no-plot"])
    assert rc == 0
    again = json.loads((tmp / "out" / "results.json").read_text())
    assert again["results"] == [r for r in res["results"] if r["model"] == "random:vit_tiny:1"]
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_run_directory_and_exported_file_give_the_same_model(tmp_path, test_data):
    from safetensors.torch import save_file

    from dinotrain.config import Config, save_config
    from dinotrain.models import build_backbone

    cfg = Config()
    cfg.model.arch = "vit_tiny"
    from omegaconf import OmegaConf

    save_config(OmegaConf.structured(cfg), tmp_path / "run")
    torch.manual_seed(7)
    model = build_backbone(cfg.model, device="cpu", drop_path_rate=0.0)
    exp = tmp_path / "run" / "export" / "latest"
    exp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(exp / "dinov2.safetensors"))
    a = load_model(str(tmp_path / "run"))
    b = load_model(str(exp / "dinov2.safetensors"))
    assert a.fingerprint == b.fingerprint != load_model("random:vit_tiny").fingerprint
    # a Hugging Face folder (as a downloaded microsoft/rad-dino): same weights; HF resamples
    # position embeddings its own way, so the cache key differs
    from dinotrain.models.convert import to_hf

    hf = load_model(str(to_hf(model, tmp_path / "hf")))
    assert hf.fingerprint != a.fingerprint
    for k, v in model.state_dict().items():
        torch.testing.assert_close(hf.model.state_dict()[k], v)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model.eval().forward_features(x)["x_norm_clstoken"]
        torch.testing.assert_close(a.model.forward_features(x)["x_norm_clstoken"], ref)
        torch.testing.assert_close(b.model.forward_features(x)["x_norm_clstoken"], ref)
    # the inputs are normalised as the run trained: its config's data.mean/std (the schema's,
    # RAD-DINO's, for anything without a run config)
    assert (a.mean, a.std) == (b.mean, b.std) == (cfg.data.mean, cfg.data.std) == (0.5307, 0.2583)
    cfg.data.mean, cfg.data.std = 0.4, 0.3
    save_config(OmegaConf.structured(cfg), tmp_path / "run")
    c = load_model(str(tmp_path / "run"))
    assert (c.mean, c.std) == (0.4, 0.3) and c.fingerprint != a.fingerprint  # other inputs, other features


def test_cli_errors_are_clear(tmp_path, test_data, capsys):
    assert run_cli(tmp_path, test_data, ["random:vit_tiny"], tasks="jsrt_nodul") == 2
    assert "built-in tasks" in capsys.readouterr().err
    assert run_cli(tmp_path, test_data, ["no/such/model"], tasks="jsrt_nodule") == 2
    assert "random:vit_small" in capsys.readouterr().err
    assert cli_main(["eval", "random:vit_tiny", "--tasks", "jsrt_nodule"]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli_main(["eval", "--list-tasks"]) == 0
    assert "jsrt_anatomy" in capsys.readouterr().out
    assert cli_main(["eval", "random:vit_tiny", "--tasks", "jsrt_nodule", "--data", str(test_data),
                     "--resolution", "100", "--max-samples", "20", "--out", str(tmp_path / "o")]) == 2
    assert "multiple of" in capsys.readouterr().err


def test_dali_loader_gives_the_plain_path_features(test_data):
    pytest.importorskip("nvidia.dali", reason="the DALI eval loader needs nvidia-dali")
    from dinotrain.eval.features import FeatureCache, extract_features
    from dinotrain.eval.specs import load_spec, load_task

    keys, images = [], []
    for name in ("jsrt_nodule", "pneumoniamnist"):  # PNG files and .npz arrays
        t = load_task(load_spec(name), test_data, max_samples=6)
        keys += t.keys[:4]
        images += t.images[:4]
    lm = load_model("random:vit_tiny")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {loader: extract_features(lm.model.forward_features, keys, images, resolution=56, patch_size=14,
                                        cache=FeatureCache(None, lm.fingerprint, 56), batch_size=8,
                                        progress=False, loader=loader)["cls"]
               for loader in ("plain", "dali")}
    finally:
        torch.set_num_threads(before)
    a, b = out["plain"], out["dali"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape == (8, 192) and cos.min() > 0.99, cos


def test_every_eval_setting_of_the_schema_is_a_flag_with_its_choices():
    import argparse
    import dataclasses

    from dinotrain.config import EvalConfig
    from dinotrain.eval.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(EvalConfig):
        assert f.name in actions, f.name
        assert tuple(actions[f.name].choices or ()) == f.metadata.get("choices", ()), f.name
    args = parser.parse_args(["m", "--data", "/d", "--knn-temperature", "0.1", "--max-samples", "5"])
    assert (args.data_root, args.knn_temperature, args.max_samples, args.resolution) == ("/d", 0.1, 5, None)
    assert args.bootstrap == EvalConfig().bootstrap


def test_each_builtin_task_has_one_kind_class_that_says_its_headline_metric():
    from dinotrain.eval.kinds import KINDS, kind_of
    from dinotrain.eval.specs import builtin_names, load_spec

    kinds = {load_spec(n).kind for n in builtin_names()}
    assert kinds <= set(KINDS) and {"classification", "regression", "segmentation"} <= kinds
    jsrt = load_spec("jsrt_anatomy")
    assert kind_of(jsrt).patch_tokens and kind_of(jsrt).headline_metric(jsrt).startswith("linear_head/dice_")
    assert kind_of(load_spec("jsrt_nodule")).headline_metric(load_spec("jsrt_nodule")) in ("linear/auroc", "knn/auroc")
    report = [n for n in builtin_names() if load_spec(n).kind in ("alignment", "report")]
    assert all(kind_of(load_spec(n)).headline_metric(load_spec(n)) is None for n in report)
