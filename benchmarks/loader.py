"""Training loader throughput from shards, end to end, vs webdataset + the PIL/numpy recipe.

Shards of real radiographs (../shared/data/jsrt, 518 px) are built with `shards build`; the
candidate is `dinotrain.data.build_train_loader` on the CPU (index reads, DALI decode and
multi-crop, iBOT masks, torch tensors); the baseline reads the same tars with webdataset and
runs the PIL + numpy recipe of `benchmarks.augment` plus the same masks. Same crop counts and
sizes (2x224 + 8x98), batch 16; images/s, one DALI thread vs one Python thread.

    python -m benchmarks.loader [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Skip, cli, ratio_row, result

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def build(out: Path, n: int) -> Path:
    from shards.build import build_shards

    src = DATA / "jsrt" / "images"
    if not src.is_dir():
        raise Skip(f"{src} missing (see shared/data/README.md)")
    files = sorted(src.glob("*.png"))[:n]
    listing = out / "inputs"
    listing.mkdir(parents=True)
    for f in files:
        (listing / f.name).symlink_to(f)
    build_shards([str(listing)], str(out / "shards"), name="jsrt", samples_per_shard=32, progress=False)
    return out / "shards"


def cpu_now() -> float:
    """CPU seconds of this process so far, all threads (user + system)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(quick: bool = False) -> dict:
    import webdataset as wds

    from benchmarks.augment import baseline_one
    from dinotrain.config import load_config
    from dinotrain.data import build_train_loader
    from dinotrain.data.augment import AugmentSpec, sample_params
    from dinotrain.data.masking import batch_masks

    n_images, batch = (32, 8) if quick else (128, 16)
    steps = n_images // batch
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(Path(tmp), n_images)
        cfg = load_config(None, [f"data.sources=[{{name: jsrt, path: {shards}}}]", f"data.batch_size_per_gpu={batch}",
                                 "data.num_threads=1", "data.device=cpu"])
        loader = build_train_loader(cfg)
        next(loader)  # build the graph and fill the prefetch queue outside the timing
        t0, c0 = time.perf_counter(), cpu_now()
        for _ in range(steps):
            next(loader)
        t_dali, c_dali = time.perf_counter() - t0, cpu_now() - c0
        loader.close()

        spec = AugmentSpec()
        tars = sorted(str(p) for p in shards.glob("*.tar"))
        rng = np.random.default_rng(0)
        t0, c0 = time.perf_counter(), cpu_now()
        done = 0
        for sample in wds.WebDataset(tars, shardshuffle=False):
            import io

            from PIL import Image

            w, h = Image.open(io.BytesIO(sample["png"])).size
            baseline_one(sample["png"], sample_params(rng, h, w, spec), spec)
            done += 1
            if done % batch == 0:
                batch_masks(rng, 2 * batch, 16, 0.1, 0.5, 0.5)
            if done == steps * batch:
                break
        t_base, c_base = time.perf_counter() - t0, cpu_now() - c0
    imgs = steps * batch
    rows = [ratio_row(f"{imgs} imgs from {len(tars)} shards, batch {batch}, 2x224 + 8x98", imgs / t_base,
                      imgs / t_dali, baseline_name="webdataset+PIL", candidate_name="dinotrain loader (DALI CPU)",
                      unit="img/s", higher_is_better=True),
            ratio_row("same, per process CPU-second (robust to other jobs on the machine)", imgs / c_base,
                      imgs / c_dali, baseline_name="webdataset+PIL", candidate_name="dinotrain loader (DALI CPU)",
                      unit="img/cpu-s", higher_is_better=True)]
    return result("loader", "training loader end to end from shards (images/s, one worker thread each)", rows,
                  notes="Ratio > 1 = the loader is faster. Includes shard reads, decode, 10 crops, masks.",
                  params={"images": imgs, "batch": batch})


if __name__ == "__main__":
    cli(run)
