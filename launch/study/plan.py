"""The study's plan: sweep sizes, steps per run and the wall-clock estimate on an idle 2-core machine,
from the time model of configs/study/laptop.yaml (pure, but for reading that file once)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from launch.study.options import StudyOptions
from launch.study.settings import laptop


@dataclass(frozen=True)
class StudyPlan:
    """What `plan` decides; study.json's `plan` is this, as a dict in this field order."""

    sizes: list[int]
    steps: int
    batch: int
    runs: int
    seconds_per_step: float
    warmups: list[str]  # fitted_warmups: overrides that shorten the recipe's warm-ups to `steps`
    estimate_minutes: float
    estimate_parts_minutes: dict[str, float]  # shards, train, eval


def tokens_per_image(cfg) -> int:
    d, p = cfg.data, cfg.model.patch_size
    return d.global_crops_number * (d.global_crops_size // p) ** 2 + d.local_crops_number * (d.local_crops_size // p) ** 2


def seconds_per_step(cfg) -> float:
    t = laptop().timings
    rate = t.train_img_per_s * t.train_ref_tokens / max(1, tokens_per_image(cfg))
    return cfg.data.batch_size_per_gpu / rate


def n_runs(sizes: list[int]) -> int:
    return 2 * len(sizes) + 2  # sweep + stage 1 + stage 2 (stage 2 from scratch is the sweep's cxr run)


def eval_seconds(opts: StudyOptions, images: dict[str, int]) -> float:
    """Feature extraction: SSL and random on every task, 2 continual models and every sweep run on CXR."""
    t = laptop().timings
    per_img = (opts.resolution / 112) ** 2 / t.eval_img_per_s_112
    all_imgs, cxr_imgs = images.get("all", 0), images.get("cxr", 0)
    n_sweep = 2 * len(opts.sizes or [0, 0, 0])
    return per_img * (2 * all_imgs + (n_sweep + 1) * cxr_imgs) + t.eval_fixed_s * (0.1 if opts.quick else 1.0)


def plan(opts: StudyOptions, cfg, pool: dict[str, int], eval_images: dict[str, int]) -> StudyPlan:
    """Sizes, steps per run and the wall-clock estimate (idle 2-core machine)."""
    from launch.study.study_runs import global_batch

    t, cxr = laptop().timings, pool["cxr"]
    sizes = sorted({min(int(s), cxr) for s in opts.sizes}) if opts.sizes else \
        sorted({max(1, round(cxr / 9)), max(1, round(cxr / 3)), cxr})
    shards_s = sum(pool.values()) / t.shard_img_per_s
    fixed = shards_s + eval_seconds(opts, eval_images) + n_runs(sizes) * t.run_overhead_s
    step_s = seconds_per_step(cfg)
    steps = opts.steps
    if steps is None:
        fits = int((opts.minutes * 60 - fixed) / (n_runs(sizes) * step_s))
        steps = max(1, min(int(cfg.train.max_steps), fits))
    total = fixed + n_runs(sizes) * steps * step_s
    parts = {"shards": round(shards_s / 60, 1),
             "train": round(n_runs(sizes) * (steps * step_s + t.run_overhead_s) / 60, 1),
             "eval": round(eval_seconds(opts, eval_images) / 60, 1)}
    return StudyPlan(sizes=sizes, steps=steps, batch=global_batch(cfg), runs=n_runs(sizes),
                     seconds_per_step=round(step_s, 3), warmups=fitted_warmups(cfg, steps),
                     estimate_minutes=round(total / 60, 1), estimate_parts_minutes=parts)


def fitted_warmups(cfg, steps: int) -> list[str]:
    """Overrides that shorten the recipe's warm-ups in proportion when a run has fewer steps than
    its train.max_steps (the config refuses a warm-up longer than the run; pure)."""
    from omegaconf import OmegaConf

    from dinotrain.config import WARMUPS

    total = int(cfg.train.max_steps)
    if steps >= total:
        return []
    return [f"{key}={int(OmegaConf.select(cfg, key)) * steps // total}" for key in WARMUPS]


def print_plan(p: StudyPlan, opts: StudyOptions, pool: dict[str, int], cluster: str, why: str) -> None:
    s = laptop()
    print(f"study plan (seed {opts.seed}, cluster {cluster}: {why}; recipe {opts.config}):", file=sys.stderr)
    print("  pretraining pool after holding out the test splits: "
          + ", ".join(f"{g} {n}" for g, n in pool.items()), file=sys.stderr)
    print(f"  {p.runs} runs x {p.steps} steps (~{p.seconds_per_step} s/step idle): sweep sizes "
          f"{p.sizes} x {list(s.diversity)}, stage 1 on {'+'.join(s.stage1)}, stage 2 on cxr", file=sys.stderr)
    print(f"  eval at {opts.resolution} px, {opts.bootstrap} bootstrap resamples, tasks {', '.join(opts.tasks)}",
          file=sys.stderr)
    parts = ", ".join(f"{k} {v}" for k, v in p.estimate_parts_minutes.items())
    print(f"  estimate on an idle 2-core machine: {p.estimate_minutes} min ({parts})", file=sys.stderr)
    if p.estimate_minutes > opts.minutes:
        print(f"  warning: the estimate is over --minutes {opts.minutes:g} ({p.steps} step(s) per run): fewer "
              "--steps, --sizes or --tasks, or a lower --resolution, shorten it", file=sys.stderr)
