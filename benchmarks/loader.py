"""Training loader throughput from shards, end to end, vs webdataset + the PIL/numpy recipe.

Shards of real radiographs (../shared/data/jsrt, 518 px) are built with `shards build`; the
candidate is `dinotrain.data.build_train_loader` on the CPU (index reads, DALI decode and
multi-crop, iBOT masks, torch tensors); the baseline reads the same tars with webdataset and
runs the PIL + numpy recipe of `benchmarks.augment` plus the same masks. Same crop counts and
sizes (2x224 + 8x98), batch 16; images/s, one DALI thread vs one Python thread. A second pair
compares the two loader backends: `data.backend=torch` (Pillow decode in one worker process,
torch ops in the main one) vs DALI CPU (one thread), per CPU-second of all their processes,
i.e. images/s per core.

    python -m benchmarks.loader [--quick]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Skip, cli, ratio_row, result

DATA = Path(os.environ.get("DINOTRAIN_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


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


def tree_cpu() -> float:
    """CPU seconds so far of this process and its live children (the torch backend's decode workers)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def of(pid: str) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    kids = set()
    for task in Path("/proc/self/task").iterdir():
        kids.update((task / "children").read_text().split())
    total = of("self")
    for pid in kids:
        try:
            total += of(pid)
        except OSError:  # exited meanwhile
            pass
    return total


def loader_timing(shards: Path, batch: int, steps: int, backend: str) -> tuple[float, float]:
    """(wall s, CPU s of all processes) of `steps` batches of the training loader, after one warm-up batch."""
    from dinotrain.config import load_config
    from dinotrain.data import build_train_loader

    cfg = load_config(None, [f"data.sources=[{{name: jsrt, path: {shards}}}]", f"data.batch_size_per_gpu={batch}",
                             "data.num_threads=1", "data.device=cpu", f"data.backend={backend}"])
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread for the torch ops, as DALI gets one (spinning OpenMP threads on a
    loader = build_train_loader(cfg)  # busy machine cost more than they give)
    try:
        next(loader)  # build the graph / start the workers and fill the prefetch queue outside the timing
        t0, c0 = time.perf_counter(), tree_cpu()
        for _ in range(steps):
            next(loader)
        return time.perf_counter() - t0, tree_cpu() - c0
    finally:
        loader.close()
        torch.set_num_threads(threads)


def run(quick: bool = False) -> dict:
    import webdataset as wds

    from benchmarks.augment import baseline_one
    from dinotrain.config import DataConfig
    from dinotrain.data.augment import sample_params
    from dinotrain.data.masking import batch_masks

    n_images, batch = (32, 8) if quick else (128, 16)
    steps = n_images // batch
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(Path(tmp), n_images)
        t_dali, c_dali = loader_timing(shards, batch, steps, "dali")
        t_torch, c_torch = loader_timing(shards, batch, steps, "torch")

        spec = DataConfig()
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
                      unit="img/cpu-s", higher_is_better=True),
            ratio_row("loader backends: torch (Pillow worker + torch ops) vs DALI CPU", imgs / t_dali, imgs / t_torch,
                      baseline_name="DALI CPU", candidate_name="torch backend", unit="img/s", higher_is_better=True),
            ratio_row("same, per CPU-second of all processes (images/s per core)", imgs / c_dali, imgs / c_torch,
                      baseline_name="DALI CPU", candidate_name="torch backend", unit="img/cpu-s",
                      higher_is_better=True)]
    return result("loader", "training loader end to end from shards (images/s, one worker thread each)", rows,
                  notes="Ratio > 1 = the loader is faster. Includes shard reads, decode, 10 crops, masks.",
                  params={"images": imgs, "batch": batch})


if __name__ == "__main__":
    cli(run)
