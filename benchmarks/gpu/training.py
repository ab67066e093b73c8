"""Real trainer runs (`dinotrain.train.run`) for the GPU check: cases, their figures, resume, loader rate.

Every case is a list of config overrides on top of `base_overrides`, so CI can check that each
one is still a valid config (tests/test_gpu_check.py) without running it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from dinotrain.run_layout import metrics_path


@dataclass(frozen=True)
class Case:
    name: str
    arch: str = "vit_base"
    precision: str = "bf16"
    checkpointing: str = "none"
    compile: bool = False
    reference: str | None = None  # the case whose losses this one must reproduce (same init, same batches)

    def overrides(self) -> list[str]:
        return [f"model.arch={self.arch}", f"parallel.mixed_precision={self.precision}",
                f"parallel.activation_checkpointing={self.checkpointing}", f"parallel.compile={str(self.compile).lower()}"]


def cases(archs: list[str], compile_: bool) -> list[Case]:
    """Per arch: bf16, fp16 (dynamic loss scaling), bf16 + full activation checkpointing; compile on the first."""
    out = []
    for arch in archs:
        base = f"{arch} bf16"
        out += [Case(base, arch), Case(f"{arch} fp16", arch, "fp16", reference=base),
                Case(f"{arch} bf16 AC", arch, checkpointing="full", reference=base)]
    if compile_ and archs:
        out.append(Case(f"{archs[0]} bf16 compile", archs[0], compile=True, reference=f"{archs[0]} bf16"))
    return out


def base_overrides(shards: Path, out: Path, steps: int, batch: int, device: str,
                   checkpoint_every: int | None = None) -> list[str]:
    """The run every case shares: RAD-DINO's crops and batch, DALI on `device`, a log line per step."""
    gpu = device == "gpu"
    return [
        f"output_dir={out}", f"data.sources=[{{name: cxr, path: {shards}}}]",
        f"data.batch_size_per_gpu={batch}", f"data.device={'gpu' if gpu else 'cpu'}",
        f"train.device={'cuda' if gpu else 'cpu'}", "data.num_threads=8" if gpu else "data.num_threads=1",
        "model.attn_backend=auto", "parallel.fsdp=true",
        f"train.max_steps={steps}", "train.log_every=1", f"train.checkpoint_every={checkpoint_every or steps}",
        "train.export_every=0", "train.progress=false",
        # every warm-up must fit in the run (the config refuses longer ones)
        f"optim.warmup_steps={min(10, steps)}", "optim.freeze_last_layer_steps=0",
        f"ssl.warmup_teacher_temp_steps={steps}",
        "launch.run_eval=false",
    ]


def metrics(run_dir: Path) -> list[dict]:
    path = metrics_path(run_dir)
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def summarise(rows: list[dict], warmup: int) -> dict:
    """Median figures over the steps after `warmup` (allocator, cuDNN and compile warm-up excluded)."""
    warm = [r for r in rows if r["step"] > warmup] or rows

    def med(key: str) -> float | None:
        vals = [r[key] for r in warm if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    step_s, data_s = med("step_time_s"), med("time_data_s")
    return {
        "images_per_s": med("images_per_s"), "step_time_s": step_s, "data_s": data_s,
        "forward_s": med("time_forward_s"), "backward_s": med("time_backward_s"),
        "optimizer_s": med("time_optimizer_s"), "mfu": med("mfu"),
        "peak_memory_gb": max((r.get("peak_memory_gb") or 0.0) for r in rows) if rows else None,
        "losses": [r["total_loss"] for r in rows], "steps": len(rows),
        "finite": all(math.isfinite(r["total_loss"]) for r in rows) and bool(rows),
    }


def run_case(case: Case, shards: Path, work: Path, steps: int, batch: int, device: str, extra: list[str] = ()) -> dict:
    """Train `steps` steps of `case` in this process; its summary plus the wall time."""
    import torch

    from dinotrain.config import load_config
    from dinotrain.train import run

    out = work / case.name.replace(" ", "_")
    cfg = load_config(None, [*base_overrides(shards, out, steps, batch, device), *case.overrides(), *extra])
    if device == "gpu":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - t0
    return {"case": case.name, **summarise(metrics(out), warmup=min(5, steps // 2)), "wall_s": wall}


def loss_rel_diff(ref: list[float], got: list[float], steps: int | None = None) -> float:
    """max |ref - got| / |ref| over the first `steps` logged losses (inf when a run is short)."""
    n = len(ref) if steps is None else steps
    if len(ref) < n or len(got) < n or n == 0:
        return float("inf")
    return max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref[:n], got[:n]))


def resume_check(shards: Path, work: Path, steps: int, batch: int, device: str, arch: str = "vit_base",
                 extra: list[str] = ()) -> dict:
    """Losses of `steps` uninterrupted steps vs a run resumed from the straight run's step-`steps // 2`
    checkpoint (what a run killed right after that checkpoint restarts from; same max_steps, so the
    same schedules)."""
    import shutil

    from dinotrain.config import load_config
    from dinotrain.train import run
    from dinotrain.train.checkpoint import step_dir

    half = steps // 2
    common = [f"model.arch={arch}", "train.deterministic=true", "model.attn_backend=sdpa", *extra]
    straight, split = work / "resume_straight", work / "resume_split"
    run(load_config(None, [*base_overrides(shards, straight, steps, batch, device, half), *common]))
    shutil.copytree(step_dir(straight, half), step_dir(split, half))
    rows = [ln for ln in metrics_path(straight).read_text().splitlines() if json.loads(ln)["step"] <= half]
    metrics_path(split).write_text("".join(ln + "\n" for ln in rows))
    run(load_config(None, [*base_overrides(shards, split, steps, batch, device, half), *common]))
    a = [r["total_loss"] for r in metrics(straight)]
    b = [r["total_loss"] for r in metrics(split)]
    tail_a, tail_b = a[half:], b[half:]
    return {"arch": arch, "steps": steps, "resumed_at": half, "straight": a, "resumed": b,
            "bitwise_equal": tail_a == tail_b and len(tail_a) == steps - half,
            "rel_diff": loss_rel_diff(tail_a, tail_b, steps - half)}


def loader_rate(shards: Path, batch: int, device: str, batches: int = 20, threads: int = 8,
                backend: str = "auto") -> dict:
    """Images/s of the training loader alone (reads, decode, 10 crops, masks), after 2 warm-up batches."""
    import torch

    from dinotrain.config import load_config
    from dinotrain.data import build_train_loader

    cfg = load_config(None, [f"data.sources=[{{name: cxr, path: {shards}}}]", f"data.batch_size_per_gpu={batch}",
                             f"data.device={device}", f"data.num_threads={threads}", f"data.backend={backend}"])
    loader = build_train_loader(cfg)
    try:
        for _ in range(2):
            next(loader)
        t0 = time.perf_counter()
        for _ in range(batches):
            b = next(loader)
        if device == "gpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    finally:
        loader.close()
    return {"images_per_s": batches * batch / dt, "batches": batches, "batch": batch, "threads": threads,
            "backend": loader.backend,
            "crops": f"{b['global_crops'].shape[0] // batch}x{b['global_crops'].shape[-1]} + "
                     f"{b['local_crops'].shape[0] // batch}x{b['local_crops'].shape[-1]}"}
