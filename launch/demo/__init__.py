"""`dinotrain demo [--out DIR] [--minutes N]`: the whole chain on a built-in synthetic corpus.

synthetic corpus -> `shards build` -> 2-process CPU pretraining of a tiny ViT through the
launcher's local executor -> frozen-feature probes of the pretrained vs a random-init encoder
on the corpus' latent attributes -> a table in the terminal, plots and a paragraph in DIR.

Modules: `synthetic` (the corpus), `run` (the orchestration), `report` (plots, table, text).
Heavy imports (torch, DALI) happen inside `main`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for the corpus, shards, run and report (default: demo_out)")
    parser.add_argument(
        "--minutes", type=float, default=8.0,
        help="wall-clock budget: sets the corpus size and step count, and training stops (keeping its last "
        "checkpoint) when the budget is spent, so a slow machine trains fewer steps; more minutes = better "
        "features (default: 8)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus and of training")
    parser.add_argument("--processes", type=int, default=2, help="training processes (local executor, gloo)")
    parser.add_argument("--steps", type=int, default=None, help="exactly this many training steps (no time budget)")
    parser.add_argument("--images", type=int, default=None, help="synthetic images (overrides the --minutes estimate)")
    parser.add_argument("--fresh", action="store_true", help="delete DIR's previous corpus, shards and run first")


def main(args: argparse.Namespace) -> int:
    from launch.demo.run import DemoOptions, run_demo

    opts = DemoOptions(
        out=args.out, minutes=args.minutes, seed=args.seed, processes=args.processes,
        steps=args.steps, images=args.images, fresh=args.fresh,
    )
    return run_demo(opts)
