"""`dinotrain train CONFIG [key=value ...]`: run pretraining in this process (or under torchrun)."""

from __future__ import annotations

import argparse
import sys

from dinotrain.config_args import add_config_arguments, resolve_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from dinotrain.config import to_yaml

    cfg = resolve_config(args)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    import logging

    from dinotrain.train.loop import NonFiniteLossError, TrainingStopped, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        summary = run(cfg)
    except NonFiniteLossError as e:
        print(f"dinotrain train: stopped: {e}", file=sys.stderr)
        return 3
    except TrainingStopped as e:  # SIGTERM / SIGUSR2 / one Ctrl-C: a clean stop, resumable
        sys.stderr.write(f"dinotrain train: {e}\n")  # one write: every rank says it (see below)
        sys.stderr.flush()
        return 0
    skipped = summary.get("skipped_samples") or 0
    note = (f"; {skipped} corrupt samples skipped and replaced by others of their batch (`dinotrain shards "
            "verify` on the data sources names them)") if skipped else ""
    # one write of the whole line: under torchrun every rank prints it into one pipe, and print's
    # separate write of the newline let two ranks' lines run together
    sys.stderr.write(f"dinotrain train: done at step {summary['final_step']} -> {summary['output_dir']}{note}\n")
    sys.stderr.flush()
    return 0
