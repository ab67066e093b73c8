"""`dinotrain study OUT`: the laptop-scale RAD-DINO study on real images, end to end.

Phases (each prints one line with the elapsed minutes; the jobs' own progress bars follow):
  1. data      hold out the eval test splits (patient, lesion or near-duplicate series), build one
               shard set per group: cxr (JSRT + COVID X-rays), derm (ham10000_large), us (BUSI),
               mri (brain_mri_large), ct (COVID CT); drop pool images that near-duplicate a test
               image (curate --against's rule: a selection every run's sources carry)
  2. pretrain  through the launcher (SLURM job array when a controller answers, else local jobs),
               the arms of --arms: ssl (one longer run on the whole pool, exported along the way),
               scaling (sizes x {derm, all}), continual (stage 1 on derm+us+mri+ct, exported; stage 2
               on cxr from it and from scratch), curated (curate --target N vs the sweep's all-nN)
  3. eval      SSL vs the same network at its initial weights on every task; the learning curve
               (each export vs step 0, the last vs the one before); continual; curated vs random;
               each sweep run on the scaling tasks; paired bootstrap CIs of every difference
  4. report    study.json, report.md, ssl_vs_random.png, curve.png, continual.png, scaling.png,
               curated.png, loss_curves.png

Example (the budget pilot: the SSL arm alone, scored on validation, no test image read):
  dinotrain study OUT --seed 99 --arms ssl --eval-split val --steps 200 --curve-points 6

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
    """The run folders `pretrain` leaves: what the evaluation and the report read (None: arm not run)."""

    sweep: list[Path]  # the sweep's runs
    ssl: Path | None  # the SSL arm's run on the whole pool (its exports give the learning curve)
    stage2: Path | None  # continual stage 2, initialised from stage 1
    scratch: Path | None  # stage 2's twin from scratch
    curated: Path | None  # trained on a curated subset ...
    curated_twin: Path | None  # ... and the sweep's random subset of the same size it is compared with
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


def common_overrides(opts: StudyOptions, steps: int, cluster: str, extra: list[str] = ()) -> list[str]:
    """Every run's overrides; `extra` (warm-ups fitted to `steps`, an arm's own) before the user's, which win."""
    from launch.study.study_runs import slurm_cpus

    cpus = slurm_cpus() if cluster == "slurm" else max(1, os.cpu_count() or 1)
    return [f"train.seed={opts.seed}", f"data.seed={opts.seed}", f"train.max_steps={steps}", "train.export_every=0",
            f"launch.cluster={cluster}", f"launch.cpus_per_task={cpus}", "launch.array_parallelism=1",
            "launch.time_minutes=180", "launch.run_eval=false", *extra, *opts.overrides]


def eval_overrides(opts: StudyOptions, cache: Path) -> dict:
    return {"resolution": opts.resolution, "bootstrap": opts.bootstrap, "seg_steps": opts.seg_steps,
            "cache_dir": str(cache), "device": "cpu", "split": opts.eval_split}


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
            "sources": {g: _source(data, g) for g in data["groups"]},
            "diversity": laptop().diversity, "sizes": sizes, "overrides": run_over,
            "report": {"metric": _sweep_metric(opts), "form": "power"}}
    path = opts.out / "sweep.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(spec)))
    return load_sweep(path)


def _source(data: dict, group: str) -> dict:
    """A group's shard set, filtered by the held-out near-duplicate selection when there is one."""
    return {"path": data["groups"][group]["path"],
            **({"selection": data["heldout_selection"]} if data.get("heldout_selection") else {})}


def _sources(data: dict, groups: list[str]) -> list[dict]:
    return [{"name": g, **_source(data, g)} for g in groups]


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
    log(t0, "data: dropping near-duplicates of the test images (dinotrain curate --against)")
    data.update(study_data.near_duplicate_holdout(data, _all_tasks(opts), opts.data_root, opts.out / "data"))
    previous = _previous_study(opts)
    runs = pretrain(opts, p, data, cluster, t0)
    if opts.reevaluate:
        reevaluate_runs(runs.trained, eval_overrides(opts, opts.out / "cache"), t0)
    if runs.sweep:
        from launch.sweeps.report import write_report

        write_report(opts.out / "sweep", metric=_sweep_metric(opts))  # `dinotrain sweep report`'s own table and plot
    results = evaluate(opts, p, runs, t0)
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


def _all_tasks(opts: StudyOptions) -> list[str]:
    return sorted(set(opts.tasks + opts.continual_tasks + opts.scaling_tasks + opts.curve_tasks))


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

    dirs = [Path(sweep_run_config(spec, r).output_dir) for r in expand(spec)] if spec is not None else []
    names = {"ssl": ["ssl"], "continual": ["stage1", "stage2_from_stage1", "stage2_from_scratch"],
             "curated": [d.name for d in (opts.out / "runs").glob("curated-n*")] or ["curated-n?"]}
    dirs += [opts.out / "runs" / n for arm, ns in names.items() if arm in opts.arms for n in ns]
    states = {d: run_status.run_state(d, None).state for d in dirs}
    missing = [f"{d.name} ({s})" for d, s in states.items() if s != State.DONE]
    if missing:
        raise RuntimeError(f"--reevaluate trains nothing, but these runs of {opts.out} are not done: "
                           f"{', '.join(missing)}; rerun without --reevaluate to train them (same --steps, "
                           "--sizes and --seed as the study that trained the others)")


def _pool(opts: StudyOptions):
    """The held-out set, the pretraining images per group, and the images each evaluation reads."""
    from launch.study import study_data

    hold = study_data.held_out(_all_tasks(opts), opts.data_root, opts.max_samples)
    pool = {g: len(study_data.group_listing(g, opts.data_root, hold, opts.images_per_group))
            for g in study_data.GROUPS}
    count = lambda tasks: study_data.task_images(tasks, opts.data_root, opts.max_samples)  # noqa: E731
    eval_images = {"all": count(opts.tasks), "curve": count(opts.curve_tasks),
                   "scaling": count(opts.scaling_tasks), "continual": count(opts.continual_tasks)}
    return hold, pool, eval_images


def pretrain(opts: StudyOptions, p: StudyPlan, data: dict, cluster: str, t0: float) -> Pretrained:
    """The arms' runs (sweep, SSL, continual stages, curated); returns the folders the evaluation needs.
    Locally one run trains at a time (the local executor has no queue); on SLURM they queue together."""
    from launch.study import study_runs
    from launch.study.study_data import GROUPS

    echo = study_runs.LogEcho()
    over = common_overrides(opts, p.steps, cluster, p.warmups)
    pending: list[Path] = []

    def go(cfg) -> Path:
        d = study_runs.submit(cfg, echo)
        if cluster == "slurm":
            pending.append(d)
        else:
            study_runs.wait_done([d], echo)
        return d

    sweep_dirs: list[Path] = []
    spec = sweep_spec(opts, data, p.sizes, over) if "scaling" in opts.arms else None
    if opts.reevaluate:
        require_trained(opts, spec)
    if spec is not None:
        log(t0, f"pretrain: sweep {p.sizes} x {list(laptop().diversity)} ({cluster})")
        sweep_dirs = study_runs.submit_sweep(spec, cluster, echo)
        pending += sweep_dirs if cluster == "slurm" else []
    runs = opts.out / "runs"
    ssl = stage2 = scratch = curated = twin = None
    if "ssl" in opts.arms:
        every = p.curve_steps[1] if len(p.curve_steps) > 1 else p.ssl_steps
        log(t0, f"pretrain: the SSL run, {p.ssl_steps} steps on the whole pool, exported every {every}")
        ssl_over = common_overrides(opts, p.ssl_steps, cluster,
                                    [*p.ssl_warmups, f"train.export_every={every}"])
        ssl = go(study_runs.run_config(str(opts.config), ssl_over, _sources(data, list(GROUPS)), runs / "ssl"))
    if "continual" in opts.arms:
        log(t0, "pretrain: continual stage 1 on " + "+".join(laptop().stage1))
        s1 = study_runs.submit(study_runs.run_config(str(opts.config), over, _sources(data, laptop().stage1),
                                                     runs / "stage1"), echo)
        study_runs.wait_done([s1], echo)  # stage 2 starts from its export
        export = export_dir(s1, None)
        cxr = _sources(data, ["cxr"])
        log(t0, "pretrain: continual stage 2 on cxr, from stage 1 and from scratch")
        stage2 = go(study_runs.run_config(str(opts.config), [*over, f"model.pretrained={export / 'dinov2.safetensors'}",
                                                             f"model.pretrained_head={export / 'dino_head.safetensors'}"],
                                          cxr, runs / "stage2_from_stage1"))
        scratch = go(study_runs.run_config(str(opts.config), over, cxr, runs / "stage2_from_scratch"))
        pending.insert(0, s1)
    if "curated" in opts.arms:
        size = curated_size(p.sizes)
        log(t0, f"pretrain: curated subset of {size} (dinotrain curate --target {size}) vs the sweep's random one")
        sel = curate_subset(opts, data, size)
        from dinotrain.data.selection import kept_count

        # balanced sampling may take nothing from a small group: the curated run trains on what it kept
        sources = [{**src, "selection": str(sel)} for src in _sources(data, laptop().diversity["all"])
                   if kept_count(str(sel), src["path"]) > 0]
        curated = go(study_runs.run_config(str(opts.config), over, sources, runs / f"curated-n{size}"))
        twin = opts.out / "sweep" / "runs" / f"all-n{size}"
    study_runs.wait_done(pending, echo)
    trained = [*sweep_dirs, *(d for d in (ssl, *pending, stage2, scratch, curated) if d is not None)]
    trained = list(dict.fromkeys(trained))
    return Pretrained(sweep=sweep_dirs, ssl=ssl, stage2=stage2, scratch=scratch, curated=curated,
                      curated_twin=twin, trained=trained)


def curated_size(sizes: list[int]) -> int:
    """The curated arm's size: the sweep's middle size (its `all` run there is the random twin)."""
    return sorted(sizes)[len(sizes) // 2]


def curate_subset(opts: StudyOptions, data: dict, size: int) -> Path:
    """`dinotrain curate --target SIZE` over the `all` groups' shards (near-duplicates of the test
    images and of each other dropped first): OUT/curate/selection.json."""
    from dinotrain.curate.run import CurateOptions
    from dinotrain.curate.run import run as curate

    out = opts.out / "curate"
    if not (out / "selection.json").is_file():
        roots = [data["groups"][g]["path"] for g in laptop().diversity["all"]]
        curate(CurateOptions(shards=roots, out=str(out), against=_all_tasks(opts), data=str(opts.data_root),
                             target=size, seed=opts.seed, threads=max(1, os.cpu_count() or 1)),
               command=f"dinotrain study (curated arm, seed {opts.seed})", log=lambda line: print(f"  {line}", file=sys.stderr))
    return out / "selection.json"


def evaluate(opts: StudyOptions, p: StudyPlan, runs: Pretrained, t0: float) -> dict:
    """The arms' comparisons, each with paired bootstrap CIs: SSL vs its initial weights (all tasks),
    the learning curve (every checkpoint vs step 0, and the last vs the one before), continual stage 2
    from stage 1 vs from scratch, curated vs random subset."""
    from dinotrain.config import load_config
    from dinotrain.eval.run import evaluate_models
    from dinotrain.train.initial import save_initial_teacher

    ev = eval_overrides(opts, opts.out / "cache")
    common = dict(data_root=str(opts.data_root), max_samples=opts.max_samples, **ev)
    # torch.distributed.checkpoint says it loads a run's checkpoint in one process: it does, on purpose
    warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
    out: dict = {"models": {}}
    if runs.ssl is not None:
        log(t0, "eval: SSL vs the same network at its initial weights")
        random_dir = save_initial_teacher(load_config(config_path(runs.ssl)), opts.out / "models" / "random_init")
        out["ssl"] = evaluate_models([str(runs.ssl), str(random_dir)], opts.tasks, out=opts.out / "eval" / "ssl_vs_random",
                                     compare_to=str(random_dir), **common)
        out["models"].update(ssl_dir=str(runs.ssl), random_dir=str(random_dir))
        log(t0, f"eval: learning curve at steps {', '.join(map(str, p.curve_steps))}")
        points = [str(random_dir) if s == 0 else str(export_dir(runs.ssl, s)) for s in p.curve_steps]
        out["curve"] = evaluate_models(points, opts.curve_tasks, out=opts.out / "eval" / "curve",
                                       compare_to=points[0], **common)
        out["curve_models"] = dict(zip(points, p.curve_steps))
        if len(points) > 2:
            out["curve_last"] = evaluate_models(points[-2:], opts.curve_tasks, out=opts.out / "eval" / "curve_last",
                                                compare_to=points[-2], with_plot=False, **common)
    if runs.stage2 is not None:
        log(t0, "eval: continual, stage 2 from stage 1 vs from scratch")
        out["continual"] = evaluate_models([str(runs.stage2), str(runs.scratch)], opts.continual_tasks,
                                           out=opts.out / "eval" / "continual", compare_to=str(runs.scratch), **common)
        out["models"].update(stage2_dir=str(runs.stage2), scratch_dir=str(runs.scratch))
    if runs.curated is not None:
        log(t0, "eval: curated vs random subset of the same size")
        out["curated"] = evaluate_models([str(runs.curated), str(runs.curated_twin)], opts.scaling_tasks,
                                         out=opts.out / "eval" / "curated", compare_to=str(runs.curated_twin), **common)
        out["models"].update(curated_dir=str(runs.curated), curated_twin_dir=str(runs.curated_twin))
    return out


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
