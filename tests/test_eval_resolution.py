"""`dinotrain eval` runs a training run at the size it trained at (its global crop size), any
other model at RAD-DINO's 518, says which in its first line, and `--resolution` overrides.

A run folder is made as `dinotrain train` leaves one (config.yaml + export/latest), with a 56 px
vit_tiny; the evaluation is real (JSRT sex, 40 images) in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_run_errors import dinotrain


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import torch

    from dinotrain.config import load_config, save_config
    from dinotrain.models import build_backbone
    from dinotrain.models.convert import save_dinov2

    run = tmp_path_factory.mktemp("eval_res") / "run"
    cfg = load_config(overrides=["model.arch=vit_tiny", "model.img_size=56", "data.global_crops_size=56",
                                 "model.layerscale_init=0.1"])
    save_config(cfg, run)
    torch.manual_seed(0)
    save_dinov2(build_backbone(cfg.model, device="cpu", drop_path_rate=0.0), run / "export" / "latest")
    return run


def _eval(test_data: Path, out: Path, *models_and_flags: str):
    res = dinotrain("eval", *models_and_flags, "--tasks", "jsrt_sex", "--data", str(test_data), "--out", str(out),
                    "--max-samples", "40", "--bootstrap", "10", "--no-plot", "--no-progress", "--threads", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    settings = json.loads((out / "results.json").read_text())["settings"]
    return res.stderr.splitlines()[0], settings["resolution"]


def test_a_run_is_evaluated_at_its_global_crop_size(run_dir, test_data, tmp_path):
    first, resolution = _eval(test_data, tmp_path / "a", str(run_dir))
    assert resolution == 56
    assert first == f"dinotrain eval: at 56 px, the global crop size {run_dir} trained at (--resolution to change)"


def test_resolution_overrides(run_dir, test_data, tmp_path):
    first, resolution = _eval(test_data, tmp_path / "b", str(run_dir), "--resolution", "112")
    assert (first, resolution) == ("dinotrain eval: at 112 px (--resolution)", 112)


def test_a_model_that_is_not_a_run_is_evaluated_at_518(run_dir, test_data, tmp_path):
    weights = str(run_dir / "export" / "latest" / "dinov2.safetensors")
    first, resolution = _eval(test_data, tmp_path / "c", weights)
    assert resolution == 518
    assert first == "dinotrain eval: at 518 px, RAD-DINO's input size, as no MODEL is a training run " \
                    "(--resolution to change)"


def test_runs_of_different_sizes_take_the_largest_and_say_so(run_dir, tmp_path):
    from dinotrain.config import load_config, save_config
    from dinotrain.eval.loading import default_resolution

    other = tmp_path / "run112"
    save_config(load_config(overrides=["data.global_crops_size=112"]), other)
    res, why = default_resolution([str(run_dir), "random:vit_tiny", str(other)])
    assert res == 112 and why == f"the largest global crop size the runs trained at ({run_dir}: 56, {other}: 112)"
