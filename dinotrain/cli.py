"""The `dinotrain` console script: one parser, subcommands implemented in their own packages.

The CLI is the composition root: it names each subcommand's module by string and imports it
only when needed, so `dinotrain --help` stays fast and `dinotrain` (the library) never
imports `launch` or `shards`. A subcommand module provides `add_arguments(parser)` and
`main(args) -> int`; its heavy imports (torch, DALI) happen inside `main`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dinotrain import __version__

# name -> (module, one-line summary, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "shards": (
        "shards.cli",
        "turn DICOM / PNG / JPEG / NIfTI corpora into verified WebDataset shards",
        "dinotrain shards build /data/cxr --name cxr --metadata meta.csv --out /data/shards/cxr",
    ),
    "data": (
        "dinotrain.data.cli",
        "look at the training data: multi-crop previews and batch statistics",
        "dinotrain data preview configs/pretrain/vitb14_cxr.yaml --out preview/",
    ),
    "train": (
        "dinotrain.train.cli",
        "pretrain a ViT with DINO + iBOT + KoLeo in this process (or under torchrun)",
        "dinotrain train configs/pretrain/vitb14_cxr.yaml optim.lr=1e-3 train.max_steps=100",
    ),
    "launch": (
        "launch.cli",
        "submit a training run (and its evaluation) to SLURM, or run it locally",
        "dinotrain launch configs/pretrain/vitb14_cxr.yaml launch.nodes=4 launch.tasks_per_node=8 --dry-run",
    ),
    "sweep": (
        "launch.sweep_cli",
        "run data-scaling sweeps (size x diversity) as job arrays and report scaling curves",
        "dinotrain sweep configs/sweeps/data_scaling.yaml && dinotrain sweep report runs/data_scaling",
    ),
    "eval": (
        "dinotrain.eval.cli",
        "evaluate frozen features: kNN/linear probes, attributes, segmentation, text alignment",
        "dinotrain eval runs/cxr_base random:vit_base --tasks jsrt_nodule,jsrt_sex --data ../shared/data",
    ),
    "export": (
        "dinotrain.models.export_cli",
        "export a checkpoint's teacher to Hugging Face or DINOv2 format",
        "dinotrain export runs/cxr_base --format hf --out exported/cxr_base",
    ),
    "demo": (
        "dinotrain.demo",
        "the whole chain on a built-in synthetic corpus, on a laptop, in minutes",
        "dinotrain demo --out demo_out --minutes 10",
    ),
}


def _load(name: str):
    module = importlib.import_module(COMMANDS[name][0])
    return module.add_arguments, module.main


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser. With `only`, just that subcommand's module is imported (fast dispatch)."""
    examples = [f"  {ex}" for _, (_, _, ex) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="dinotrain",
        description="Pretrain general-purpose medical image encoders with image-only self-supervision\n"
        "(DINO + iBOT + KoLeo, the RAD-DINO recipe), from a messy archive to scaling curves.",
        epilog="examples:\n" + "\n".join(examples) + "\n\nRun `dinotrain COMMAND --help` for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dinotrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, summary, example) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if only is None or only == name:
            add_arguments, main = _load(name)
            add_arguments(p)
            p.set_defaults(_main=main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from dinotrain.config import ConfigError

    try:
        return int(args._main(args) or 0)
    except ConfigError as e:
        print(f"dinotrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
