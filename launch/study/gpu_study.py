"""The study's science question on one GPU in minutes: `bash benchmarks/gpu_study.sh`.

Does this pretraining make a better encoder? One ViT-S/14 is pretrained on every group of the
laptop study's pool (cxr, derm, us, mri, ct; the eval test splits held out), with the laptop
recipe scaled up (bf16, torch.compile, batch sized to the GPU, 112 px global crops), for as many
steps as fit the time budget; its teacher is then evaluated against the same network at its
step-0 weights on the laptop study's tasks, with paired bootstrap CIs. Phases:

  prepare  (here, on the CPU, before the device call) a copy of the study's datasets with every
           image's shorter side brought down to --size (masks alike, nearest): the study's
           resolution, small enough to travel with the working tree (the 64 MiB limit)
  run      (on the GPU) shards of that copy (launch.study.study_data), a short compiled calibration run
           that measures the step time, the pretraining run sized to the remaining budget, the
           evaluation (dinotrain.eval), OUT/study.json and OUT/report.md

`--dry-run` runs the same phases on the CPU in about a minute (tiny model, 2 steps, 2 tasks):
CI runs it (tests/test_gpu_study.py) so that the first GPU minute is not spent on a typo.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dinotrain.run_layout import config_path, metrics_path

REPO = Path(__file__).resolve().parents[2]
CARRY_BYTES = 60 * 2**20  # what may travel with the working tree: 64 MiB, less the code and wheels
TASKS = ["jsrt_sex", "jsrt_age", "jsrt_nodule", "covid_sex", "covid_age", "covid_finding", "busi", "brain_mri",
         "ham10000", "ham10000_sex", "ham10000_age", "jsrt_anatomy", "covid_lungs"]  # the laptop study's
# the laptop recipe (configs/pretrain/laptop_real.yaml) scaled to a GPU: ViT-S, 112/56 px crops (the study's
# resolution), DINOv2's 8 local crops and base learning rate (sqrt-scaled with the batch), bf16, compile
GPU_RECIPE = ["model.arch=vit_small", "model.img_size=112", "data.global_crops_size=112", "data.local_crops_size=56",
              "data.local_crops_number=8", "optim.lr=4e-3", "optim.lr_scaling=sqrt",
              "parallel.mixed_precision=bf16", "parallel.compile=true", "data.device=gpu", "train.device=cuda",
              "data.backend=auto", "data.num_threads=12", "train.log_every=10", "train.progress=false",
              "train.export_every=0", "launch.run_eval=false"]
DRY_RUN = ["model.arch=vit_tiny", "model.img_size=56", "data.global_crops_size=56", "data.local_crops_size=28",
           "data.local_crops_number=2", "ssl.head_n_prototypes=64", "ssl.head_hidden_dim=64",
           "ssl.head_bottleneck_dim=32", "parallel.mixed_precision=fp32", "parallel.compile=false",
           "data.device=cpu", "train.device=cpu", "data.backend=torch", "data.num_threads=1", "train.log_every=1",
           "train.progress=false", "train.export_every=0", "launch.run_eval=false", "data.batch_size_per_gpu=4"]


@dataclass
class GpuStudyOptions:
    out: Path
    data_root: Path
    minutes: float = 8.0  # end to end, process start to report
    eval_reserve_s: float = 150.0  # kept for the evaluation and the report
    steps: int | None = None  # None: as many as fit
    step_cap: int | None = None  # the most steps the budget may give (the dry run's few)
    calibration_steps: int = 30  # compiled steps that measure the step time (the first third not counted)
    batch: int | None = None  # None: sized to the GPU's memory
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    resolution: int = 112
    bootstrap: int = 1000
    seg_steps: int = 300
    max_samples: int | None = None
    images_per_group: int | None = None
    shard_size: int = 128
    dry_run: bool = False
    overrides: list[str] = field(default_factory=list)


def log(t0: float, text: str) -> None:
    print(f"[{time.time() - t0:6.0f} s] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- prepare (CPU)
def needed_datasets(tasks: list[str]) -> list[str]:
    from dinotrain.eval.specs import load_spec
    from launch.study.study_data import SMALL_GROUPS

    return sorted({load_spec(t).dataset for t in tasks} | {d for g in SMALL_GROUPS.values() for d, _ in g})


def shrink(src: Path, dst: Path, size: int, nearest: bool) -> None:
    """One image with its shorter side brought down to `size` (never up), same format and mode."""
    from PIL import Image

    with Image.open(src) as im:
        w, h = im.size
        if min(w, h) > size:
            s = size / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))),
                           Image.NEAREST if nearest else Image.BICUBIC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, **({"quality": 95} if dst.suffix.lower() in (".jpg", ".jpeg") else {}))


def joined_datasets(tasks: list[str]) -> list[str]:
    """Datasets whose metadata.csv a task's `group_join` reads (brain_mri borrows brain_mri_large's groups)."""
    from dinotrain.eval.specs import load_spec

    return sorted({d for t in tasks if (d := load_spec(t).group_join.get("dataset"))})


def prepare(data_root: Path, out: Path, size: int, datasets: list[str], limit: int = CARRY_BYTES,
            metadata_only: tuple[str, ...] = ()) -> dict:
    """A copy of `datasets` (metadata.csv unchanged, images and masks shrunk), plus the bare metadata.csv
    of `metadata_only`; refuses one over `limit` bytes."""
    record = {"size": size, "datasets": {}}
    for ds in metadata_only:
        (out / ds).mkdir(parents=True, exist_ok=True)
        (out / ds / "metadata.csv").write_bytes((data_root / ds / "metadata.csv").read_bytes())
    for ds in datasets:
        meta = data_root / ds / "metadata.csv"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta} not found: point --data at the folder holding {ds}/ "
                                    "(see shared/data/README.md)")
        (out / ds).mkdir(parents=True, exist_ok=True)
        (out / ds / "metadata.csv").write_bytes(meta.read_bytes())
        with meta.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        n = 0
        for row in rows:
            masks = [m for m in (row.get("mask_paths") or "").split(";") if m.strip()]
            for rel, nearest in [(row["path"], False), *((m, True) for m in masks)]:
                shrink(data_root / ds / rel, out / ds / rel, size, nearest)
                n += 1
        record["datasets"][ds] = {"rows": len(rows), "files": n}
    record["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if record["bytes"] > limit:
        raise RuntimeError(f"{out}: {record['bytes'] / 2**20:.1f} MiB is over the {limit / 2**20:.0f} MiB that may "
                           f"travel; use a smaller --size (now {size})")
    (out / "prepared.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


# ----------------------------------------------------------------------------- run (GPU)
def batch_for_gpu(dry_run: bool) -> int:
    """Images per step: what a ViT-S at 112/56 px crops uses well on the GPU (a few GiB per 100 images)."""
    if dry_run:
        return 4
    import torch

    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return 512 if gib >= 40 else 256 if gib >= 20 else 128


def recipe(opts: GpuStudyOptions, batch: int, steps: int, out: Path, sources: list[dict]):
    """The pretraining run's validated config: the laptop recipe, scaled (GPU_RECIPE) or shrunk (DRY_RUN)."""
    from dinotrain.config import load_config
    from launch.study.options import DEFAULT_CONFIG
    from launch.study.plan import fitted_warmups
    from launch.study.study_runs import run_config

    over = [*(DRY_RUN if opts.dry_run else GPU_RECIPE), f"data.batch_size_per_gpu={batch}",
            f"train.seed={opts.seed}", f"data.seed={opts.seed}"]
    base = load_config(DEFAULT_CONFIG, [*over, *opts.overrides])
    warm = fitted_warmups(base, steps) if steps < int(base.train.max_steps) else []
    over = [*over, f"train.max_steps={steps}", f"train.checkpoint_every={steps}", *warm, *opts.overrides]
    return run_config(str(DEFAULT_CONFIG), over, sources, out)


def step_seconds(run_dir: Path, skip: int) -> float:
    """Median step time of a finished run after its first `skip` logged steps (compile, allocator warm-up)."""
    import statistics

    rows = [json.loads(ln) for ln in (metrics_path(run_dir)).read_text().splitlines() if ln.strip()]
    times = [r["step_time_s"] for r in rows if r["step"] > skip and r.get("step_time_s")]
    if not times:
        raise RuntimeError(f"{run_dir}: no step times logged after step {skip}; cannot size the run")
    return statistics.median(times)


def fit_steps(budget_s: float, overhead_s: float, step_s: float, least: int = 10) -> int:
    """Steps that fit `budget_s` after `overhead_s` (process start, compile), at least `least` (pure)."""
    return max(least, int((budget_s - overhead_s) / max(step_s, 1e-6)))


def pretrain(opts: GpuStudyOptions, sources: list[dict], t0: float) -> tuple[Path, dict]:
    """Calibrate (a short compiled run), then the run that fills the budget; its folder and the plan."""
    from dinotrain.train import run

    batch = opts.batch or batch_for_gpu(opts.dry_run)
    plan: dict = {"batch": batch}
    if opts.steps is None:
        n = opts.calibration_steps
        cal_dir = opts.out / "runs" / "calibration"
        cal_cfg = recipe(opts, batch, n, cal_dir, sources)
        cal_cfg.train.log_every = 1
        log(t0, f"pretrain: calibration, {n} steps x batch {batch}")
        c0 = time.time()
        run(cal_cfg)
        plan["calibration_s"] = round(time.time() - c0, 1)
        plan["seconds_per_step"] = round(step_seconds(cal_dir, n // 3), 4)
        left = opts.minutes * 60 - (time.time() - t0) - opts.eval_reserve_s
        # the run starts and compiles again (cache warm now): charge it the calibration's fixed part
        overhead = max(0.0, plan["calibration_s"] - n * plan["seconds_per_step"])
        plan["budget_s"], plan["overhead_s"] = round(left, 1), round(overhead, 1)
        plan["steps"] = fit_steps(left, overhead, plan["seconds_per_step"])
        if opts.step_cap is not None:
            plan["steps"] = min(plan["steps"], opts.step_cap)
    else:
        plan["steps"] = opts.steps
    run_dir = opts.out / "runs" / "ssl"
    log(t0, f"pretrain: ViT ({'dry run' if opts.dry_run else 'vit_small'}) {plan['steps']} steps x batch {batch}")
    r0 = time.time()
    run(recipe(opts, batch, plan["steps"], run_dir, sources))
    plan["train_s"] = round(time.time() - r0, 1)
    plan["images_seen"] = plan["steps"] * batch
    return run_dir, plan


def evaluate(opts: GpuStudyOptions, ssl_dir: Path, t0: float) -> dict:
    """The trained teacher vs the same network at its step-0 weights (the run's own init), paired CIs."""
    import warnings

    from dinotrain.config import load_config
    from dinotrain.eval.run import evaluate_models
    from dinotrain.train.initial import save_initial_teacher

    random_dir = save_initial_teacher(load_config(config_path(ssl_dir)), opts.out / "models" / "step0")
    log(t0, f"eval: {len(opts.tasks)} tasks at {opts.resolution} px, {opts.bootstrap} bootstrap resamples")
    warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
    res = evaluate_models([str(ssl_dir), str(random_dir)], opts.tasks, data_root=str(opts.data_root),
                          out=opts.out / "eval" / "ssl_vs_step0", compare_to=str(random_dir),
                          max_samples=opts.max_samples, resolution=opts.resolution, bootstrap=opts.bootstrap,
                          seg_steps=opts.seg_steps, cache_dir=str(opts.out / "cache"),
                          device="cpu" if opts.dry_run else "cuda", with_plot=False)
    return {"ssl": res, "ssl_dir": str(ssl_dir), "random_dir": str(random_dir)}


def assemble(opts: GpuStudyOptions, plan: dict, data: dict, results: dict, minutes: float) -> dict:
    """study.json: the laptop study's comparison rows and SSL claim, for one run on one GPU."""
    from launch.study.study_report import _comparisons, _headline, claims, run_summaries

    rows = _headline(_comparisons(results["ssl"], results["ssl_dir"], ("ssl", "random")), opts.tasks, ("ssl", "random"))
    study = {"kind": "gpu_study", "seed": opts.seed, "minutes": round(minutes, 2), "dry_run": opts.dry_run,
             "machine": machine(), "tasks": rows, "plan": plan, "data": data,
             "recipe": str(REPO / "configs" / "pretrain" / "laptop_real.yaml"),
             "overrides": [*(DRY_RUN if opts.dry_run else GPU_RECIPE), *opts.overrides],
             "eval": {"resolution": opts.resolution, "bootstrap": opts.bootstrap, "max_samples": opts.max_samples,
                      "seg_steps": opts.seg_steps, "reference": "the same network at its step-0 weights",
                      "ci": "95% percentile bootstrap over test images (whole patients where the task groups "
                      "them); deltas: paired, the same resamples for both models"},
             "models": {k: results[k] for k in ("ssl_dir", "random_dir")},
             "runs": run_summaries([Path(results["ssl_dir"])])}
    study["claims"] = {"ssl_beats_random": claims({"tasks": rows})["ssl_beats_random"]}
    return study


def machine() -> dict:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpus": os.cpu_count()}


def report_md(study: dict) -> str:
    from launch.study.study_markdown import _comparison_table, _runs_table

    p, c = study["plan"], study["claims"]["ssl_beats_random"]
    m = study["machine"]
    lines = [f"# GPU study: does this pretraining make a better encoder? ({'dry run, ' if study['dry_run'] else ''}"
             f"seed {study['seed']})", "",
             f"One run on {m['gpu'] or 'the CPU'} (torch {m['torch']}), {study['minutes']:.1f} min end to end: "
             f"{p['steps']} steps x batch {p['batch']} = {p['images_seen']:,} images seen "
             f"({p.get('seconds_per_step', '–')} s/step measured by a calibration run), pretraining pool "
             + ", ".join(f"{g} {v['images']}" for g, v in study["data"]["groups"].items()) + ".", "",
             "## SSL teacher vs the same network at its step-0 weights", "",
             *_comparison_table(study["tasks"], "ssl", "random"), "",
             f"CIs: {study['eval']['ci']}. Eval at {study['eval']['resolution']} px, "
             f"{study['eval']['bootstrap']} resamples.", "",
             f"Claim (the laptop study's rule: CI above 0 on >= 6 image-level tasks incl. a sex and an age task, "
             f"and a higher Dice): {'**holds**' if c['holds'] else '**does not hold**'}; CI above 0 on "
             f"{', '.join(c['image_tasks_ci_above_zero']) or 'none'}.", "",
             "## The run", "", *_runs_table(study["runs"]), "",
             f"Recipe: {Path(study['recipe']).name} with {' '.join(study['overrides'])}.", ""]
    return "\n".join(lines)


def run_study(opts: GpuStudyOptions) -> dict:
    from launch.study import study_data, study_report

    t0 = time.time()
    opts.out.mkdir(parents=True, exist_ok=True)
    log(t0, "data: holding out the eval test splits, building shards")
    hold = study_data.held_out(sorted(set(opts.tasks)), opts.data_root, opts.max_samples)
    data = study_data.prepare(opts.data_root, opts.out / "data", hold, opts.shard_size, opts.images_per_group,
                              workers=os.cpu_count(), progress=False, groups=study_data.SMALL_GROUPS)
    sources = [{"name": g, "path": v["path"]} for g, v in data["groups"].items()]
    ssl_dir, plan = pretrain(opts, sources, t0)
    results = evaluate(opts, ssl_dir, t0)
    study = study_report.clean(assemble(opts, plan, data, results, (time.time() - t0) / 60))
    (opts.out / "study.json").write_text(json.dumps(study, indent=1, allow_nan=False) + "\n")
    (opts.out / "report.md").write_text(report_md(study))
    log(t0, f"done: {opts.out / 'report.md'}")
    return study


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.study.gpu_study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="shrink the study's datasets to travel (CPU, before the device call)")
    pp.add_argument("--data", type=Path, required=True, help="folder holding jsrt/, covid_cxr/, ...")
    pp.add_argument("--out", type=Path, required=True)
    pp.add_argument("--size", type=int, default=128, help="shorter side of every image (default 128)")
    rp = sub.add_parser("run", help="shards, pretraining, evaluation, report (on the GPU)")
    rp.add_argument("--data", type=Path, required=True, help="a `prepare` output (or the full data folder)")
    rp.add_argument("--out", type=Path, required=True)
    rp.add_argument("--minutes", type=float, default=8.0, help="end-to-end budget the step count is sized to (8)")
    rp.add_argument("--steps", type=int, default=None, help="fixed steps instead of the budget's")
    rp.add_argument("--batch", type=int, default=None, help="images per step (default: sized to the GPU)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 2 steps, 2 tasks: checks the machinery")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "prepare":
            rec = prepare(args.data, args.out, args.size, needed_datasets(TASKS),
                          metadata_only=tuple(joined_datasets(TASKS)))
            print(f"prepared {args.out}: {rec['bytes'] / 2**20:.1f} MiB", file=sys.stderr)
            return 0
        opts = GpuStudyOptions(out=args.out.absolute(), data_root=args.data.absolute(), minutes=args.minutes,
                               steps=args.steps, batch=args.batch, seed=args.seed, overrides=args.overrides)
        if args.dry_run:
            opts = GpuStudyOptions(**{**asdict(opts), "dry_run": True, "step_cap": 3, "calibration_steps": 6,
                                      "eval_reserve_s": 30.0, "tasks": ["jsrt_sex", "jsrt_anatomy"],
                                      "resolution": 56, "bootstrap": 30, "seg_steps": 10, "max_samples": 60,
                                      "images_per_group": 18, "shard_size": 64})
        run_study(opts)
        return 0
    except (RuntimeError, OSError, ValueError) as e:
        if os.environ.get("DINOTRAIN_DEBUG"):
            raise
        print(f"gpu_study: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
