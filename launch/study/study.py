"""`dinotrain study OUT`: the laptop-scale RAD-DINO study on real images, end to end.

Phases (each prints one line with the elapsed minutes; the jobs' own progress bars follow):
  1. data      hold out the eval test splits (patient-level), build one shard set per group:
               cxr (JSRT + COVID X-rays), derm (HAM10000), us (BUSI), mri (brain MRI), ct (COVID CT)
  2. pretrain  through the launcher (SLURM job array when a controller answers, else local jobs):
               data-scaling sweep, sizes x {cxr, all}; continual stage 1 on derm+us+mri+ct (exported),
               stage 2 on cxr initialised from it (model.pretrained + model.pretrained_head)
  3. eval      SSL (the `all` run at the largest size) vs the same network at its initial weights,
               stage 2 from stage 1 vs from scratch (the sweep's cxr run at the largest size: same
               budget), with paired bootstrap CIs of the differences; each sweep run on the CXR probes
  4. report    study.json, report.md, ssl_vs_random.png, continual.png, scaling.png, loss_curves.png

`dinotrain study --combine OUT0 OUT1 OUT2 --out DIR` merges several seeds into DIR/seeds.md.
`dinotrain study OUT --reevaluate` evaluates a finished study again (after a probe or metric change).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from dinotrain.run_layout import config_path, export_dir
from launch.jobs.runstate import State
from launch.study.options import StudyOptions, add_option_flags, options_from_args
from launch.study.plan import StudyPlan, plan, print_plan
from launch.study.settings import laptop


@dataclass(frozen=True)
class Pretrained:
    """The run folders `pretrain` leaves: what the evaluation and the report read."""

    sweep: list[Path]  # the sweep's runs
    ssl: Path  # the sweep's `all` run at the largest size
    stage2: Path  # continual stage 2, initialised from stage 1
    scratch: Path  # stage 2's twin from scratch (the sweep's cxr run at the largest size, or its own run)
    trained: list[Path]  # every run this study trained


def log(t0: float, text: str) -> None:
    print(f"[{(time.time() - t0) / 60:5.1f} min] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the study
def resolve_cluster(choice: str) -> tuple[str, str]:
    """The launcher (`slurm` or `local`) and why: `auto` takes SLURM when a controller answers."""
    from launch.study.study_runs import slurm_state

    if choice != "auto":
        return choice, f"--cluster {choice}"
    ok, why = slurm_state()
    return ("slurm" if ok else "local"), why


def common_overrides(opts: StudyOptions, steps: int, cluster: str, warmups: list[str] = ()) -> list[str]:
    """Every run's overrides; `warmups` (see fitted_warmups) before the user's, which win."""
    from launch.study.study_runs import slurm_cpus

    cpus = slurm_cpus() if cluster == "slurm" else max(1, os.cpu_count() or 1)
    return [f"train.seed={opts.seed}", f"data.seed={opts.seed}", f"train.max_steps={steps}", "train.export_every=0",
            f"launch.cluster={cluster}", f"launch.cpus_per_task={cpus}", "launch.array_parallelism=1",
            "launch.time_minutes=180", "launch.run_eval=false", *warmups, *opts.overrides]


def eval_overrides(opts: StudyOptions, cache: Path) -> dict:
    return {"resolution": opts.resolution, "bootstrap": opts.bootstrap, "seg_steps": opts.seg_steps,
            "cache_dir": str(cache), "device": "cpu"}


def sweep_spec(opts: StudyOptions, data: dict, sizes: list[int], overrides: list[str]):
    """The sweep file (written to OUT/sweep.yaml, so `dinotrain sweep status|report` work on it)."""
    from omegaconf import OmegaConf

    from launch.sweeps.sweep import load_sweep

    ev = eval_overrides(opts, opts.out / "cache")
    run_over = [*overrides, "launch.run_eval=true", f"eval.tasks=[{','.join(opts.scaling_tasks)}]",
                f"eval.data_root={Path(opts.data_root).resolve()}",
                *(f"eval.{k}={v}" for k, v in ev.items()),
                f"eval.max_samples={'null' if opts.max_samples is None else opts.max_samples}"]
    spec = {"name": f"laptop_study_seed{opts.seed}", "base": str(Path(opts.config).resolve()),
            "output_dir": str(opts.out / "sweep"),
            "sources": {g: v["path"] for g, v in data["groups"].items()},
            "diversity": laptop().diversity, "sizes": sizes, "overrides": run_over,
            "report": {"metric": _sweep_metric(opts), "form": "power"}}
    path = opts.out / "sweep.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(spec)))
    return load_sweep(path)


def _sweep_metric(opts: StudyOptions) -> str:
    from launch.study.study_report import primary_metric

    return f"{opts.scaling_tasks[0]}/{primary_metric(opts.scaling_tasks[0])}"


def run_study(opts: StudyOptions) -> dict:
    from dinotrain.config import load_config
    from launch.study import study_data, study_report

    t0 = time.time()
    opts.out.mkdir(parents=True, exist_ok=True)
    cluster, why = resolve_cluster(opts.cluster)
    log(t0, "data: holding out the eval test splits")
    hold, pool, eval_images = _pool(opts)
    p = plan(opts, load_config(opts.config, opts.overrides), pool, eval_images)
    print_plan(p, opts, pool, cluster, why)
    log(t0, "data: building shard sets")
    data = study_data.prepare(opts.data_root, opts.out / "data", hold, opts.shard_size, opts.images_per_group)
    previous = _previous_study(opts)
    runs = pretrain(opts, p, data, common_overrides(opts, p.steps, cluster, p.warmups), cluster, t0)
    if opts.reevaluate:
        reevaluate_runs(runs.trained, eval_overrides(opts, opts.out / "cache"), t0)
    from launch.sweeps.report import write_report

    write_report(opts.out / "sweep", metric=_sweep_metric(opts))  # `dinotrain sweep report`'s own table and plot

    log(t0, "eval: SSL vs the same network at its initial weights")
    from dinotrain.train.initial import save_initial_teacher

    random_dir = save_initial_teacher(load_config(config_path(runs.ssl)), opts.out / "models" / "random_init")
    results = evaluate(opts, runs.ssl, random_dir, runs.stage2, runs.scratch, t0)
    log(t0, "report")
    minutes = (time.time() - t0) / 60
    study = study_report.assemble(opts, p, data, results, runs.sweep, cluster,
                                  minutes=previous["minutes"] if previous else minutes)
    if previous:  # the study's wall clock stays the run that trained; this invocation only re-evaluated
        study["reevaluated_minutes"] = round(minutes, 2)
    study["cluster_reason"] = why
    study["runs"] = study_report.run_summaries(runs.trained)
    (opts.out / "study.json").write_text(json.dumps(study_report.clean(study), indent=1, allow_nan=False) + "\n")
    study_report.render(opts.out, ablation=Path(opts.config).with_suffix(".ablation.md"))
    log(t0, f"done: {opts.out / 'report.md'}")
    return study


def _previous_study(opts: StudyOptions) -> dict | None:
    """With --reevaluate, the study.json of the invocation that trained the runs (None if there is none)."""
    path = opts.out / "study.json"
    if not opts.reevaluate or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): delete it, or rerun without --reevaluate") from e


def reevaluate_runs(run_dirs: list[Path], settings: dict, t0: float) -> None:
    """Evaluate again each run that evaluates itself (launch.run_eval: the sweep's), with the study's
    eval settings; frozen features come from the study's cache (so an extraction change needs a new OUT)."""
    from dinotrain.config import load_config
    from launch.jobs.task import evaluate_run, wants_eval

    for d in map(Path, run_dirs):
        cfg = load_config(config_path(d))
        if wants_eval(cfg):
            log(t0, f"eval: again for {d.name} ({', '.join(cfg.eval.tasks)})")
            evaluate_run(d, cfg, **settings)


def require_trained(opts: StudyOptions, spec) -> None:
    """--reevaluate trains nothing: every run of the plan must be done already (else one line naming them)."""
    from launch.jobs import status as run_status
    from launch.sweeps.sweep import expand
    from launch.sweeps.sweep import run_config as sweep_run_config

    dirs = [Path(sweep_run_config(spec, r).output_dir) for r in expand(spec)]
    dirs += [opts.out / "runs" / n for n in ("stage1", "stage2_from_stage1")]
    dirs += [d for d in [opts.out / "runs" / "stage2_from_scratch"] if d.is_dir()]
    states = {d: run_status.run_state(d, None).state for d in dirs}
    missing = [f"{d.name} ({s})" for d, s in states.items() if s != State.DONE]
    if missing:
        raise RuntimeError(f"--reevaluate trains nothing, but these runs of {opts.out} are not done: "
                           f"{', '.join(missing)}; rerun without --reevaluate to train them (same --steps, "
                           "--sizes and --seed as the study that trained the others)")


def _pool(opts: StudyOptions):
    """The held-out set, the pretraining images per group, and the images the evaluation reads."""
    from launch.study import study_data

    hold = study_data.held_out(sorted(set(opts.tasks + opts.continual_tasks + opts.scaling_tasks)),
                               opts.data_root, opts.max_samples)
    pool = {g: len(study_data.group_listing(g, opts.data_root, hold, opts.images_per_group))
            for g in study_data.GROUPS}
    eval_images = {"all": sum(pool.values()) + len(hold.images), "cxr": pool["cxr"] + len(hold.images) // 2}
    return hold, pool, eval_images


def pretrain(opts: StudyOptions, p: StudyPlan, data: dict, over: list[str], cluster: str, t0: float) -> Pretrained:
    """The sweep, then continual stages 1 and 2; returns the run folders the evaluation needs."""
    from dinotrain.config import load_config
    from launch.study import study_runs
    from launch.sweeps.sweep import expand

    echo = study_runs.LogEcho()
    log(t0, f"pretrain: sweep {p.sizes} x {list(laptop().diversity)} ({cluster})")
    spec = sweep_spec(opts, data, p.sizes, over)
    if opts.reevaluate:
        require_trained(opts, spec)
    sweep_dirs = study_runs.submit_sweep(spec, cluster, echo)
    largest = max(p.sizes)
    ssl_dir, scratch_dir = (opts.out / "sweep" / "runs" / f"{d}-n{largest}" for d in ("all", "cxr"))
    stage1 = study_runs.run_config(str(opts.config), over, [{"name": g, "path": data["groups"][g]["path"]}
                                                            for g in laptop().stage1], opts.out / "runs" / "stage1")
    log(t0, "pretrain: continual stage 1 on " + "+".join(laptop().stage1))
    s1 = study_runs.submit(stage1, echo)
    study_runs.wait_done([s1], echo)
    export = export_dir(s1, None)
    cxr_run = next(r for r in expand(spec) if r.name == f"cxr-n{largest}")
    cxr_sources = [{k: v for k, v in s.items() if k in ("name", "path", "max_samples")} for s in cxr_run.sources]
    stage2 = study_runs.run_config(str(opts.config), [*over, f"model.pretrained={export / 'dinov2.safetensors'}",
                                                      f"model.pretrained_head={export / 'dino_head.safetensors'}"],
                                   cxr_sources, opts.out / "runs" / "stage2_from_stage1")
    log(t0, "pretrain: continual stage 2 on cxr from stage 1")
    s2 = study_runs.submit(stage2, echo)
    study_runs.wait_done([*sweep_dirs, s2], echo)
    trained = [*sweep_dirs, s1, s2]
    if study_runs.training_part(load_config(config_path(scratch_dir))) != study_runs.training_part(_without_init(stage2)):
        log(t0, "pretrain: the sweep's cxr run differs from stage 2 beyond its init: a separate from-scratch run")
        scratch = study_runs.run_config(str(opts.config), over, cxr_sources, opts.out / "runs" / "stage2_from_scratch")
        scratch_dir = study_runs.submit(scratch, echo)
        study_runs.wait_done([scratch_dir], echo)
        trained.append(scratch_dir)
    return Pretrained(sweep=sweep_dirs, ssl=ssl_dir, stage2=s2, scratch=scratch_dir, trained=trained)


def _without_init(cfg):
    """Stage 2's config as it would be without the stage-1 initialisation."""
    from omegaconf import OmegaConf

    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    c.model.pretrained = None
    c.model.pretrained_head = None
    return c


def evaluate(opts: StudyOptions, ssl_dir: Path, random_dir: Path, stage2: Path, scratch: Path, t0: float) -> dict:
    from dinotrain.eval.run import evaluate_models

    ev = eval_overrides(opts, opts.out / "cache")
    common = dict(data_root=str(opts.data_root), max_samples=opts.max_samples, **ev)
    # torch.distributed.checkpoint says it loads a run's checkpoint in one process: it does, on purpose
    warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
    ssl = evaluate_models([str(ssl_dir), str(random_dir)], opts.tasks, out=opts.out / "eval" / "ssl_vs_random",
                          compare_to=str(random_dir), **common)
    log(t0, "eval: continual, stage 2 from stage 1 vs from scratch")
    cont = evaluate_models([str(stage2), str(scratch)], opts.continual_tasks, out=opts.out / "eval" / "continual",
                           compare_to=str(scratch), **common)
    return {"ssl": ssl, "continual": cont, "ssl_dir": str(ssl_dir), "random_dir": str(random_dir),
            "stage2_dir": str(stage2), "scratch_dir": str(scratch)}


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0] + "\n\n" + "\n".join((__doc__ or "").split("\n")[2:])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("out", nargs="?", metavar="OUT", help="output folder (data/, sweep/, runs/, eval/, report)")
    add_option_flags(parser)  # one per StudyOptions field (launch.study.options)
    parser.add_argument("--combine", nargs="+", metavar="OUT_SEED",
                        help="merge several study folders (seeds) into --out/seeds.md and seeds.json")
    parser.add_argument("--out", dest="combine_out", default=None, help="with --combine: where seeds.md and seeds.json go "
                        "(default: the first folder, whose report.md then gets the seeds table)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate only")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except (RuntimeError, OSError, ValueError) as e:  # BuildError, a failed run, a bad spec or config
        if os.environ.get("DINOTRAIN_DEBUG"):
            raise
        print(f"dinotrain study: error: {e}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    if args.combine:
        from launch.study.study_report import combine

        for p in combine([Path(d) for d in args.combine], Path(args.combine_out or args.combine[0])):
            print(p)
        return 0
    if not args.out:
        print("dinotrain study: error: give OUT (the study folder), or --combine OUT0 OUT1 ... --out DIR",
              file=sys.stderr)
        return 2
    opts = options_from_args(args)
    if not (opts.data_root / "jsrt" / "metadata.csv").is_file():
        print(f"dinotrain study: error: {opts.data_root} does not hold jsrt/metadata.csv: pass --data or set "
              "DINOTRAIN_TEST_DATA to the folder holding jsrt/, covid_cxr/, ... (see shared/data/README.md)",
              file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(opts)
    run_study(opts)
    return 0


def _dry_run(opts: StudyOptions) -> int:
    from dinotrain.config import load_config

    _, pool, eval_images = _pool(opts)
    p = plan(opts, load_config(opts.config, opts.overrides), pool, eval_images)
    print_plan(p, opts, pool, *resolve_cluster(opts.cluster))
    print(json.dumps({"plan": asdict(p), "options": {k: str(v) if isinstance(v, Path) else v
                                             for k, v in asdict(opts).items()}}, indent=1))
    return 0 if math.isfinite(p.estimate_minutes) else 1
