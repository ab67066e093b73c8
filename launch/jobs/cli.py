"""`dinotrain launch CONFIG [key=value ...]`: submit training (then its evaluation) through submitit."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dinotrain.config_args import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch script and the resolved config; submit nothing")
    parser.add_argument("--wait", action="store_true", help="wait for the job to finish and print its state")
    parser.add_argument("--probe", action="store_true",
                        help="submit the cluster probe (a checkpointing step counter over gloo) instead of "
                        "the trainer, to check nodes, ranks and requeue in seconds")


def main(args: argparse.Namespace) -> int:
    from dinotrain.config import to_yaml
    from dinotrain.config_args import resolve_config

    cfg = resolve_config(args)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    if args.dry_run:
        from launch.jobs.executor import sbatch_script
        from launch.jobs.submit import absolute_run_config

        cfg = absolute_run_config(cfg)
        print(f"# cluster: {cfg.launch.cluster}  (sbatch script below applies to launch.cluster=slurm)")
        print(sbatch_script(cfg))
        print("# resolved config")
        sys.stdout.write(to_yaml(cfg))
        return 0

    from launch.jobs import status
    from launch.jobs.probe import ENTRY as PROBE_ENTRY
    from launch.jobs.runstate import State
    from launch.jobs.submit import submit_run
    from launch.jobs.task import DEFAULT_ENTRY

    job = submit_run(cfg, entry=PROBE_ENTRY if args.probe else DEFAULT_ENTRY)
    run_dir = job.paths.folder
    print(f"submitted job {job.job_id} ({cfg.launch.cluster}); run dir {cfg.output_dir}; logs {run_dir}")
    if not args.wait:
        return 0
    from pathlib import Path

    (final,) = status.wait_for([Path(str(cfg.output_dir)).absolute()], timeout_s=float("inf"), poll_s=2)
    print(f"job {job.job_id}: {final.state} {final.detail}".rstrip())
    return 0 if final.state == State.DONE else 1
