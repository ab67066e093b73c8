"""The study's plan: sweep sizes, steps per run and the wall-clock estimate on an idle 2-core machine,
from the time model of configs/study/laptop.yaml (pure, but for reading that file once)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from launch.study.options import StudyOptions
from launch.study.settings import laptop


@dataclass(frozen=True)
class StudyPlan:
    """What `plan` decides; study.json's `plan` is this, as a dict in this field order."""

    sizes: list[int]
    steps: int  # every run's, but the SSL run's
    batch: int
    runs: int
    seconds_per_step: float
    warmups: list[str]  # fitted_warmups: overrides that shorten the recipe's warm-ups to `steps`
    estimate_minutes: float
    estimate_parts_minutes: dict[str, float]  # shards, train, eval
    ssl_steps: int = 0  # the SSL arm's one run (budget.ssl_steps_factor x steps)
    curve_steps: list[int] = field(default_factory=list)  # its learning curve's checkpoints (0 = its init)
    arms: list[str] = field(default_factory=list)
    ssl_warmups: list[str] = field(default_factory=list)
    budget_why: str = ""  # configs/study/laptop.yaml budget.why: why the training time is split this way


def tokens_per_image(cfg) -> int:
    d, p = cfg.data, cfg.model.patch_size
    return d.global_crops_number * (d.global_crops_size // p) ** 2 + d.local_crops_number * (d.local_crops_size // p) ** 2


def seconds_per_step(cfg) -> float:
    t = laptop().timings
    rate = t.train_img_per_s * t.train_ref_tokens / max(1, tokens_per_image(cfg))
    return cfg.data.batch_size_per_gpu / rate


def run_units(arms: list[str], sizes: list[int], ssl_factor: float) -> tuple[int, float]:
    """(runs, training time in units of one ordinary run): the SSL run counts ssl_factor, the sweep
    2 x sizes, continual 3 (stage 1, stage 2, its from-scratch twin), curated 1."""
    runs, units = 0, 0.0
    if "ssl" in arms:
        runs, units = runs + 1, units + ssl_factor
    if "scaling" in arms:
        runs, units = runs + 2 * len(sizes), units + 2 * len(sizes)
    if "continual" in arms:
        runs, units = runs + 3, units + 3
    if "curated" in arms:
        runs, units = runs + 1, units + 1
    return runs, units


def eval_seconds(opts: StudyOptions, images: dict[str, int], sizes: list[int]) -> float:
    """Feature extraction: SSL and random on every task and the learning curve's checkpoints on its
    tasks, every sweep run on the scaling tasks, 2 continual models on theirs, the curated run."""
    t = laptop().timings
    per_img = (opts.resolution / 112) ** 2 / t.eval_img_per_s_112
    n = 0.0
    if "ssl" in opts.arms:
        # the curve's step 0 and last step are the random init and the final run: already extracted
        n += 2 * images.get("all", 0) + ((opts.curve_points or laptop().budget.curve_points) - 1) * images.get("curve", 0)
    if "scaling" in opts.arms:
        n += 2 * len(sizes) * images.get("scaling", 0)
    if "continual" in opts.arms:
        n += 2 * images.get("continual", 0)
    if "curated" in opts.arms:
        n += images.get("scaling", 0)
    return per_img * n + t.eval_fixed_s * (0.1 if opts.quick else 1.0)


def default_sizes(pool: int) -> list[int]:
    """The sweep's sizes: the scaling pool /16, /4 and all of it."""
    return sorted({max(1, round(pool / 16)), max(1, round(pool / 4)), pool})


def curve_steps(ssl_steps: int, points: int) -> list[int]:
    """0 (the run's init), then `points` evenly spaced checkpoints ending at the last step."""
    every = max(1, ssl_steps // max(1, points))
    return sorted({0, *range(every, ssl_steps + 1, every), ssl_steps})


def plan(opts: StudyOptions, cfg, pool: dict[str, int], eval_images: dict[str, int]) -> StudyPlan:
    """Sizes, steps per run and the wall-clock estimate (idle 2-core machine)."""
    from launch.study.study_runs import global_batch

    s = laptop()
    t, limit = s.timings, pool[s.scaling_pool]
    sizes = sorted({min(int(n), limit) for n in opts.sizes}) if opts.sizes else default_sizes(limit)
    runs, units = run_units(opts.arms, sizes, s.budget.ssl_steps_factor)
    shards_s = sum(pool.values()) / t.shard_img_per_s
    ev = eval_seconds(opts, eval_images, sizes)
    fixed = shards_s + ev + runs * t.run_overhead_s
    step_s = seconds_per_step(cfg)
    steps = opts.steps
    if steps is None:
        fits = int((opts.minutes * 60 - fixed) / (units * step_s))
        steps = max(1, min(int(cfg.train.max_steps), fits))
    points = opts.curve_points or s.budget.curve_points
    # a multiple of the curve's points: its checkpoints are evenly spaced and the last one is the end
    ssl_steps = max(1, round(steps * s.budget.ssl_steps_factor / points)) * points if "ssl" in opts.arms else 0
    total_steps = units * steps
    parts = {"shards": round(shards_s / 60, 1),
             "train": round((total_steps * step_s + runs * t.run_overhead_s) / 60, 1),
             "eval": round(ev / 60, 1)}
    return StudyPlan(sizes=sizes, steps=steps, batch=global_batch(cfg), runs=runs,
                     seconds_per_step=round(step_s, 3), warmups=fitted_warmups(cfg, steps),
                     estimate_minutes=round((fixed + total_steps * step_s) / 60, 1), estimate_parts_minutes=parts,
                     ssl_steps=ssl_steps, curve_steps=curve_steps(ssl_steps, points) if ssl_steps else [],
                     arms=list(opts.arms), ssl_warmups=fitted_warmups(cfg, ssl_steps) if ssl_steps else [],
                     budget_why=s.budget.why)


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
    arms = []
    if "ssl" in p.arms:
        arms.append(f"ssl: 1 run x {p.ssl_steps} steps on the whole pool, learning curve at steps "
                    f"{', '.join(map(str, p.curve_steps))}")
    if "scaling" in p.arms:
        arms.append(f"scaling: sizes {p.sizes} x {list(s.diversity)}")
    if "continual" in p.arms:
        arms.append(f"continual: stage 1 on {'+'.join(s.stage1)}, stage 2 on cxr from it and from scratch")
    if "curated" in p.arms:
        arms.append(f"curated: a curated subset of {sorted(p.sizes)[len(p.sizes) // 2]} vs the sweep's random one")
    print(f"  {p.runs} runs, {p.steps} steps each but the SSL run (~{p.seconds_per_step} s/step idle)", file=sys.stderr)
    for a in arms:
        print(f"    {a}", file=sys.stderr)
    print(f"  eval at {opts.resolution} px on the {opts.eval_split} split, {opts.bootstrap} bootstrap resamples, "
          f"tasks {', '.join(opts.tasks)}", file=sys.stderr)
    parts = ", ".join(f"{k} {v}" for k, v in p.estimate_parts_minutes.items())
    print(f"  estimate on an idle 2-core machine: {p.estimate_minutes} min ({parts})", file=sys.stderr)
    if p.estimate_minutes > opts.minutes:
        print(f"  warning: the estimate is over --minutes {opts.minutes:g} ({p.steps} step(s) per run): fewer "
              "--steps, --sizes or --tasks, or a lower --resolution, shorten it", file=sys.stderr)
