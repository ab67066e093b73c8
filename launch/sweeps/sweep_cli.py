"""`dinotrain sweep [run] SWEEP.yaml [key=value ...]`, `sweep status DIR`, `sweep report DIR`."""

from __future__ import annotations

import argparse
import sys

ACTIONS = ("run", "status", "report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="+", metavar="ARG",
                        help="[run] SWEEP.yaml [key=value ...]: submit (overrides are sweep keys such as "
                        "sizes=[100,1000], sources.cxr=PATH, output_dir=DIR, or run-config keys such as "
                        "train.max_steps=100); status DIR: state of every run; report DIR: results.csv, "
                        "scaling.png, report.md")
    parser.add_argument("--dry-run", action="store_true", help="run: list what would be submitted, submit nothing")
    parser.add_argument("--wait", action="store_true", help="run: wait until every run is done or failed")
    parser.add_argument("--metric", default=None,
                        help="report: the metric of scaling.png and the fits, as task/kind/metric, e.g. "
                        "jsrt_nodule/linear/auroc (default: the sweep's report.metric, else an evaluation metric "
                        "of the runs with CIs, a linear-probe AUROC first, else the final training loss, never fitted)")
    parser.add_argument("--form", choices=("power", "saturating"), default=None,
                        help="report: y = a*n^b (power, default; >= 3 sizes) or y = c - a*n^-b (saturating, "
                        ">= 4 sizes); fitted only where every point has a CI and the ends' CIs are apart (the "
                        "study's rule), else the report says 'no fit (why)'")


def main(args: argparse.Namespace) -> int:
    rest = list(args.args)
    action = rest.pop(0) if rest[0] in ACTIONS else "run"
    if not rest:
        print(f"dinotrain sweep {action}: give a {'sweep file' if action == 'run' else 'sweep folder'}",
              file=sys.stderr)
        return 2
    if action == "status":
        return _status(rest[0])
    if action == "report":
        return _report(rest[0], args.metric, args.form)
    return _run(rest[0], rest[1:], args.dry_run, args.wait)


def _run(path: str, overrides: list[str], dry_run: bool, wait: bool) -> int:
    from launch.sweeps.sweep import load_sweep
    from launch.sweeps.sweep_run import plan_and_submit

    spec = load_sweep(path, overrides)
    plan = plan_and_submit(spec, dry_run=dry_run)
    verb = "would submit" if dry_run else "submitted"
    print(f"sweep {spec.name}: {verb} {len(plan.submit)} run(s), skipped {len(plan.skip)}; folder {plan.sweep_dir}")
    for name in plan.submit:
        print(f"  submit  {name}")
    for name, state in plan.skip.items():
        print(f"  {state:<7} {name}")
    if dry_run and plan.script:
        print("# sbatch script of the array\n" + plan.script)
    if wait and not dry_run:
        from launch.jobs import status
        from launch.sweeps.sweep import run_dirs

        status.wait_for(run_dirs(plan.sweep_dir), timeout_s=float("inf"), poll_s=5)
        return _status(str(plan.sweep_dir))
    return 0


def _status(folder: str) -> int:
    from pathlib import Path

    from launch.jobs import status
    from launch.jobs.runstate import State
    from launch.sweeps.sweep import run_dirs

    dirs = run_dirs(folder)
    if not dirs:
        print(f"dinotrain sweep status: {folder}: no runs (runs/*/run.json); give a sweep folder", file=sys.stderr)
        return 2
    states = status.states_of(dirs)
    counts: dict[State, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
        print(f"{s.state:<9} {Path(s.run_dir).name:<40} {s.job_id or '-':<10} {s.detail}".rstrip())
    print("total: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if counts.get(State.FAILED) else 0


def _report(folder: str, metric: str | None, form: str | None) -> int:
    from launch.sweeps.report import write_report

    try:
        out = write_report(folder, metric=metric, form=form)
    except (FileNotFoundError, ValueError) as e:
        print(f"dinotrain sweep report: {e}", file=sys.stderr)
        return 2
    for p in out.values():
        print(p)
    return 0
