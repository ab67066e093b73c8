"""Frozen-feature extraction throughput of `dinotrain eval` (images/s), real JSRT radiographs.

`python -m benchmarks.features [--quick]`. Each case runs the eval path end to end
(`dinotrain.eval.features.extract_features`: PIL decode, RAD-DINO resize + centre crop +
normalise, batched `forward_features`, CLS and patch tokens to numpy) with the feature cache
off. Baseline: ViT-S/14 at 224; candidates: ViT-S/14 at 518, ViT-B/14 at 224 and 518 (ratios
< 1: how much slower than the baseline), and the cached path (a second pass served from the
on-disk cache, ratio > 1: how much the cache saves). Random-init weights: speed does not depend
on the values. `--quick`: ViT-Ti at 56/112 on a few images, seconds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.common import Skip, cli, ratio_row, result, timeit


def _images(n: int) -> list[str]:
    root = Path(os.environ.get("DINOTRAIN_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    files = sorted((root / "jsrt" / "images").glob("*.png"))
    if len(files) < n:
        raise Skip(f"needs {n} JSRT images under {root}/jsrt/images (set DINOTRAIN_TEST_DATA)")
    return [str(p) for p in files[:n]]


def _extractor(arch: str, resolution: int, images: list[str], batch_size: int, cache_root: str | None):
    import torch

    from dinotrain.config import ModelConfig
    from dinotrain.eval.features import FeatureCache, extract_features
    from dinotrain.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone(ModelConfig(arch=arch), device="cpu", drop_path_rate=0.0).eval()
    keys = [f"bench/{p}" for p in images]
    cache = FeatureCache(cache_root, f"bench-{arch}", resolution)

    def run():
        extract_features(model.forward_features, keys, images, resolution=resolution, patch_size=14,
                         cache=cache, need_patch=True, batch_size=batch_size, progress=False)

    return run


def run(quick: bool = False) -> dict:
    import torch

    n = 4 if quick else 16
    batch = 4 if quick else 8
    repeat = 2 if quick else 3
    images = _images(n)
    if quick:
        base_case, cases = ("vit_tiny", 56), [("vit_tiny", 112)]
    else:
        base_case, cases = ("vit_small", 224), [("vit_small", 518), ("vit_base", 224), ("vit_base", 518)]
    rows = []
    base = timeit(_extractor(*base_case, images, batch, None), repeat=repeat)
    base_ips = n / base.median
    name = f"{base_case[0]}@{base_case[1]}"
    for arch, res in cases:
        t = timeit(_extractor(arch, res, images, batch, None), repeat=repeat)
        rows.append(ratio_row(f"{arch}@{res}, {n} images, batch {batch}", base_ips, n / t.median,
                              baseline_name=name, candidate_name=f"{arch}@{res}", unit="img/s",
                              higher_is_better=True))
    with tempfile.TemporaryDirectory() as tmp:
        cached = _extractor(*base_case, images, batch, tmp)
        cached()  # fill the cache; timed passes read it
        t = timeit(cached, repeat=repeat)
        rows.append(ratio_row(f"{name} from the feature cache, {n} images", base_ips, n / t.median,
                              baseline_name=f"{name} extracted", candidate_name=f"{name} cached", unit="img/s",
                              higher_is_better=True))
    return result(
        "features",
        "eval feature extraction throughput (CPU): model size and resolution vs the smallest case",
        rows,
        notes="img/s of decode + preprocessing + forward + tokens to numpy; ratio = candidate/baseline "
              "img/s (< 1 = slower than the baseline). Timings on a shared machine vary with its load.",
        params={"images": n, "batch_size": batch, "repeat": repeat, "threads": torch.get_num_threads()},
    )


if __name__ == "__main__":
    cli(run)
