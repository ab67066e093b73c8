"""`dinotrain train CONFIG [key=value ...]`: run pretraining in this process (or under torchrun)."""

from __future__ import annotations

import argparse
import sys


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG + dotlist overrides, shared by every command that takes a run config."""
    parser.add_argument(
        "config", nargs="?", default=None,
        help="YAML file with deltas to the defaults (e.g. configs/pretrain/vitb14_cxr.yaml); "
        "may be left out, or be a key=value override",
    )
    parser.add_argument(
        "overrides", nargs="*", default=[],
        help="dotlist overrides applied after the file, e.g. optim.lr=1e-3 train.max_steps=100",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved YAML config and exit")


def resolve_config(args: argparse.Namespace):
    """Load CONFIG + overrides (a first positional with '=' is an override, not a file)."""
    from dinotrain.config import load_config

    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:
        path, overrides = None, [path, *overrides]
    return load_config(path, overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from dinotrain.config import to_yaml

    cfg = resolve_config(args)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    import logging

    from dinotrain.train.loop import NonFiniteLossError, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        summary = run(cfg)
    except NonFiniteLossError as e:
        print(f"dinotrain train: stopped: {e}", file=sys.stderr)
        return 3
    print(f"dinotrain train: done at step {summary['final_step']} -> {summary['output_dir']}", file=sys.stderr)
    return 0
