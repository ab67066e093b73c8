"""The torch loader backend (data.backend=torch) against the DALI one: parity, resume, choice, training.

Both backends draw the same samples, `sample_params` rows and iBOT masks, so everything but the
crops' pixels must be equal; the pixels may differ by the rounding of two resize/blur
implementations. Tolerance: 1e-2 on normalised pixels, gpu_check's `dali_crops`; measured here:
max 1.1e-3, mean 1e-5 (224 px from 518 px JSRT and COVID X-rays, every augmentation on).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dinotrain.config import ConfigError
from dinotrain.data import build_train_loader
from tests.test_data_loader import cfg_for, take

REPO = Path(__file__).resolve().parents[1]
CROP_TOL = 1e-2  # normalised pixels, as gpu_check's dali_crops
EVERY_OP = ["data.intensity_p=1", "data.blur_p_global1=1", "data.solarize_p_global2=1", "data.blur_p_local=0.5"]


def _pair(sources, *extra):
    cfg = cfg_for(sources, *extra)
    out = []
    for backend in ("dali", "torch"):
        cfg.data.backend = backend
        out.append(build_train_loader(cfg))
    return out


def _assert_same_batches(a: dict, b: dict, tol: float) -> dict:
    for key in ("keys", "source", "dataset", "modality", "upperbound"):
        assert a[key] == b[key], key
    for key in ("masks", "mask_indices_list", "masks_weight", "n_masked_patches"):
        assert torch.equal(a[key], b[key]), key
    assert np.array_equal(a["aug_params"], b["aug_params"])
    diffs = {}
    for key in ("global_crops", "local_crops"):
        assert a[key].shape == b[key].shape and b[key].dtype == torch.float32, key
        d = (a[key] - b[key]).abs()
        diffs[key] = (float(d.max()), float(d.mean()))
        assert diffs[key][0] <= tol, (key, diffs[key])
    return diffs


@pytest.mark.parametrize("which", ["cxr8", "cxr16", "mixed"])
def test_torch_crops_match_dali_on_the_same_parameters(which, cxr_shards, cxr16_shards, mixed_shards):
    sources = {"cxr8": [{"name": "cxr", "path": cxr_shards}], "cxr16": [{"name": "cxr", "path": cxr16_shards}],
               "mixed": [{"name": k, "path": v} for k, v in mixed_shards.items()]}[which]
    dali, tch = _pair(sources, *EVERY_OP, "data.global_crops_size=112", "data.local_crops_size=42")
    try:
        for a, b in zip(take(dali, 2), take(tch, 2)):
            _assert_same_batches(a, b, CROP_TOL)
            p = a["aug_params"]
            assert p[:, 1, 9].all() and p[:, 0, 7].all()  # solarised and blurred crops are in the comparison
    finally:
        dali.close()
        tch.close()


def test_parity_check_fails_on_what_it_must_catch(cxr_shards):
    """A crop window off by a few pixels (what a wrong resize convention gives) is over the tolerance."""
    from dinotrain.data.augment import Col
    from dinotrain.data.pipeline import GraphSpec
    from dinotrain.data.torch_augment import multicrop

    dali, _ = _pair([{"name": "cxr", "path": cxr_shards}], "data.intensity_p=0")
    b = next(dali)
    dali.close()
    params = b["aug_params"].copy()
    params[:, :, [Col.X0, Col.X1]] += 0.03
    refs = [r for r in dali.stream.sources[0].refs if r.key in b["keys"]]
    from dinotrain.data.decode import decode_image

    by_key = {r.key: r for r in refs}
    imgs = [decode_image(dali.reader.read(by_key[k].shard, by_key[k].image_offset, by_key[k].image_size), True)
            for k in b["keys"]]
    g = GraphSpec(56, 28, 3, True, dali.graph.mean, dali.graph.std)
    moved, _ = multicrop(imgs, params, 2, 2, g, torch.device("cpu"))
    assert float((moved - b["global_crops"]).abs().max()) > CROP_TOL


def test_torch_resume_gives_the_same_next_batches_bitwise(cxr_shards):
    cfg = cfg_for([{"name": "cxr", "path": cxr_shards}], "data.backend=torch", *EVERY_OP)
    a = build_train_loader(cfg)
    take(a, 2)
    state = json.loads(json.dumps(a.state_dict()))
    expected = take(a, 3)
    a.close()
    b = build_train_loader(cfg)
    b.load_state_dict(state)
    got = take(b, 3)
    for e, g in zip(expected, got):
        assert e["keys"] == g["keys"]
        for key in ("global_crops", "local_crops", "masks"):
            assert torch.equal(e[key], g[key]), key
    # a state restored in the middle of prefetched batches rewinds them too
    b.load_state_dict(state)
    assert next(b)["keys"] == expected[0]["keys"]
    b.close()


def test_auto_takes_torch_without_dali_and_says_so_in_the_first_log_line(cxr_shards, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now raises ImportError
    cfg = cfg_for([{"name": "cxr", "path": cxr_shards}])
    assert cfg.data.backend == "auto"
    with caplog.at_level(logging.INFO, logger="dinotrain.data.loader"):
        loader = build_train_loader(cfg)
    assert loader.backend == "torch"
    first = caplog.records[0].getMessage()
    assert "torch on cpu" in first and "data.backend=auto and nvidia.dali is not importable" in first, first
    assert next(loader)["global_crops"].shape == (8, 3, 56, 56)
    loader.close()
    cfg.data.backend = "dali"
    with pytest.raises(ConfigError, match=r"data.backend=dali but nvidia.dali is not importable .*set data.backend=torch"):
        build_train_loader(cfg)
    monkeypatch.delitem(sys.modules, "nvidia.dali")
    cfg.data.backend = "auto"
    assert build_train_loader(cfg).backend == "dali"


def test_backend_is_validated(cxr_shards):
    with pytest.raises(ConfigError, match="invalid value 'jax' for 'data.backend': allowed values are auto, dali, torch"):
        cfg_for([{"name": "cxr", "path": cxr_shards}], "data.backend=jax")


def test_corrupt_batch_raises_in_its_turn_and_the_loader_rewinds(cxr_shards, tmp_path):
    """Every sample of batch 2 corrupt: batches 0-1 come out, then the error, and a retry raises it again."""
    import shutil

    from dinotrain.data.shard_index import DataError

    cfg = cfg_for([{"name": "cxr", "path": cxr_shards}], "data.backend=torch")
    probe = build_train_loader(cfg)
    batches = take(probe, 3)
    probe.close()
    shards = tmp_path / "shards"
    shutil.copytree(cxr_shards, shards)
    refs = {r.key: r for r in build_train_loader(cfg_for([{"name": "cxr", "path": shards}])).stream.sources[0].refs}
    for key in batches[2]["keys"]:
        r = refs[key]
        with open(r.shard, "r+b") as f:
            f.seek(r.image_offset + 8)
            f.write(b"\x00" * 64)  # PNG chunk CRC now wrong
    loader = build_train_loader(cfg_for([{"name": "cxr", "path": shards}], "data.backend=torch"))
    assert [b["keys"] for b in take(loader, 2)] == [b["keys"] for b in batches[:2]]
    for _ in range(2):
        with pytest.raises(DataError, match="every sample of a batch is corrupt"):
            next(loader)
    loader.close()


def test_decode_workers_do_not_import_torch():
    code = "import sys, dinotrain.data.decode; print('torch' in sys.modules, 'nvidia.dali' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]


def _laptop_losses(shards: Path, out: Path, backend: str, seed: int, steps: int) -> list[float]:
    """Losses of a short run of the laptop recipe (its warm-ups scaled to `steps`, as the study does)."""
    from dinotrain.config import load_config
    from dinotrain.train import run
    from launch.study.options import DEFAULT_CONFIG
    from launch.study.plan import fitted_warmups

    base = load_config(DEFAULT_CONFIG)
    cfg = load_config(DEFAULT_CONFIG, [
        f"output_dir={out}", f"data.sources=[{{name: cxr, path: {shards}}}]", f"data.backend={backend}",
        f"train.seed={seed}", f"data.seed={seed}", f"train.max_steps={steps}", *fitted_warmups(base, steps),
        "data.batch_size_per_gpu=16", "data.num_threads=1", "data.device=cpu", "train.device=cpu",
        "train.log_every=1", "train.progress=false", "train.checkpoint_every=1000", "launch.run_eval=false"])
    run(cfg)
    return [json.loads(ln)["total_loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.mark.slow
def test_laptop_recipe_trains_on_torch_and_its_loss_curve_matches_dali_within_seed_noise(cxr_shards, tmp_path):
    """Noise = the spread between two DALI seeds; the torch run (seed 0) must sit well inside it."""
    steps = 16
    dali0 = _laptop_losses(cxr_shards, tmp_path / "dali0", "dali", 0, steps)
    dali1 = _laptop_losses(cxr_shards, tmp_path / "dali1", "dali", 1, steps)
    torch0 = _laptop_losses(cxr_shards, tmp_path / "torch0", "torch", 0, steps)
    assert len(dali0) == len(dali1) == len(torch0) == steps and all(np.isfinite(torch0))
    noise = float(np.mean(np.abs(np.subtract(dali1, dali0))))
    gap = float(np.mean(np.abs(np.subtract(torch0, dali0))))
    print(f"mean |loss diff| over {steps} steps: torch vs DALI (seed 0) {gap:.4g}, DALI seed 1 vs 0 {noise:.4g}")
    assert noise > 0 and gap < 0.25 * noise, (gap, noise, torch0, dali0, dali1)
    assert torch0[-1] < torch0[0]  # it learns
