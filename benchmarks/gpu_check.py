"""GPU check: bf16 FSDP2 training steps of vit_base/14 on 2x224 + 8x98 crops, DALI mixed decode.

Runs the real trainer (`dinotrain.train.run`) on shards built from real radiographs
(`--data`, default ../shared/data/jsrt) or, where none are reachable, from generated
grayscale PNGs, and reports images/s, the step time split (data / forward / backward /
optimiser, CUDA-synchronised), peak memory and MFU (model FLOPs / step time / the card's
bf16 peak). Writes `<out>/gpu_check.json`. Needs a CUDA GPU; `bash benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Skip, machine, result, write_json

REPO = Path(__file__).resolve().parents[1]


def _make_pngs(folder: Path, n: int, size: int = 518) -> list[str]:
    """Smooth random grayscale images (a stand-in when no real data is on the machine)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        p = folder / f"img{i:04d}.png"
        img.save(p)
        paths.append(str(p))
    return paths


def build_shards(data: Path | None, work: Path, n_images: int) -> tuple[Path, str]:
    from shards.build import build_shards as build

    if data is not None and (data / "images").is_dir():
        files = sorted(str(p) for p in (data / "images").iterdir())[:n_images]
        origin = f"real images from {data}"
        meta = str(data / "metadata.csv") if (data / "metadata.csv").is_file() else None
    else:
        files = _make_pngs(work / "pngs", n_images)
        origin = "generated grayscale PNGs (no real data found)"
        meta = None
    out = work / "shards"
    build(files, str(out), name="gpucheck", size=518, workers=4, metadata=meta, modality="CR",
          samples_per_shard=64, progress=False)
    return out, origin


def run_check(steps: int, batch: int, data: Path | None, compile_: bool, out_dir: Path) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise Skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    from dinotrain.config import load_config
    from dinotrain.models.attention import xformers_available
    from dinotrain.train import run

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    t0 = time.perf_counter()
    shards, origin = build_shards(data, work, n_images=max(256, batch * 4))
    t_shards = time.perf_counter() - t0
    overrides = [
        f"output_dir={work / 'run'}",
        f"data.sources=[{{name: cxr, path: {shards}}}]",
        f"data.batch_size_per_gpu={batch}", "data.device=gpu", "data.num_threads=8",
        "data.global_crops_size=224", "data.local_crops_size=98", "data.local_crops_number=8",
        "model.arch=vit_base", "model.attn_backend=auto",
        "parallel.mixed_precision=bf16", f"parallel.compile={str(compile_).lower()}",
        f"train.max_steps={steps}", "train.log_every=1", f"train.checkpoint_every={steps}",
        "train.export_every=0", "train.progress=false",
        # every warm-up must fit in the run (the config refuses longer ones)
        f"optim.warmup_steps={min(10, steps)}", f"optim.freeze_last_layer_steps={min(5, steps)}",
        f"ssl.warmup_teacher_temp_steps={steps}",
    ]
    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    summary = run(cfg)
    t_run = time.perf_counter() - t0
    rows = [json.loads(ln) for ln in (work / "run" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    warm = [r for r in rows if r["step"] > min(5, steps // 2)]  # first steps: allocator and kernel warm-up

    def med(key: str) -> float:
        vals = [r[key] for r in warm if r.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    figures = {
        "images_per_s": med("images_per_s"),
        "step_time_s": med("step_time_s"),
        "data_s": med("time_data_s"),
        "forward_s": med("time_forward_s"),
        "backward_s": med("time_backward_s"),
        "optimizer_s": med("time_optimizer_s"),
        "mfu": med("mfu"),
        "peak_memory_gb": max(r["peak_memory_gb"] for r in rows),
        "final_total_loss": rows[-1]["total_loss"],
    }
    params = {
        "steps": steps, "batch_per_gpu": batch, "crops": "2x224 + 8x98", "arch": "vit_base/14",
        "precision": "bf16 (FSDP2 MixedPrecisionPolicy, fp32 reduce)", "decode": "DALI mixed (GPU)",
        "attention": "xformers" if xformers_available() else "sdpa", "compile": compile_,
        "data": origin, "shard_build_s": t_shards, "run_s": t_run, "checkpoint": summary["checkpoint"],
        "gpu": torch.cuda.get_device_name(0),
    }
    print(f"\nGPU check on {params['gpu']} ({params['attention']}, compile={compile_}), {origin}")
    print("| images/s | step s | data s | forward s | backward s | optimiser s | MFU | peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {figures['images_per_s']:.1f} | {figures['step_time_s']:.3f} | {figures['data_s']:.3f} | "
          f"{figures['forward_s']:.3f} | {figures['backward_s']:.3f} | {figures['optimizer_s']:.3f} | "
          f"{figures['mfu']:.3f} | {figures['peak_memory_gb']:.1f} |")
    rows_out = [{
        "case": f"vit_base/14 bf16 FSDP2, {batch}/GPU, 2x224+8x98", "baseline": "-", "candidate": "trainer",
        "baseline_value": figures["images_per_s"], "candidate_value": figures["images_per_s"], "unit": "img/s",
        "ratio": 1.0, "higher_is_better": True, **figures,
    }]
    res = result("gpu_check", "bf16 FSDP2 ViT-B/14 training steps on one GPU (absolute figures)", rows_out,
                 notes="Absolute throughput of the real trainer; MFU uses the card's dense bf16 peak.",
                 params=params)
    res["machine"] = machine()
    write_json("gpu_check", res, out_dir)
    return res


def run(quick: bool = False) -> dict:
    """Entry of `python -m benchmarks`: skipped without a GPU."""
    return run_check(steps=10 if quick else 30, batch=40, data=_default_data(), compile_=False,
                     out_dir=Path(__file__).resolve().parent / "out")


def _default_data() -> Path | None:
    p = REPO.parent / "shared" / "data" / "jsrt"
    return p if p.is_dir() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=40, help="images per GPU (RAD-DINO: 40)")
    ap.add_argument("--data", type=Path, default=_default_data(), help="folder with images/ (+ metadata.csv)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = ap.parse_args(argv)
    try:
        run_check(args.steps, args.batch, args.data, args.compile, args.out)
    except Skip as e:
        print(f"gpu_check skipped: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
