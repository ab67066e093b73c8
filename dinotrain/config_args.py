"""CONFIG + dotlist overrides on a command line: the arguments every command that takes a run
config shares (`dinotrain train`, `dinotrain data preview`, `dinotrain launch`)."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG + dotlist overrides + --print-config."""
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
