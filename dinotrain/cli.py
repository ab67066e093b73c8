"""The `dinotrain` console script: one parser, subcommands implemented in their own packages.

The CLI is the composition root: it names each subcommand's module by string and imports it
only when needed, so `dinotrain --help` stays fast and `dinotrain` (the library) never
imports `launch` or `shards` (tests/test_architecture.py holds it). A subcommand module provides `add_arguments(parser)` and
`main(args) -> int`; its heavy imports (torch, DALI) happen inside `main`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dinotrain import __version__
from dinotrain.errors import DEBUG_ENV, debug_requested, describe

# name -> (module, one-line summary, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "shards": (
        "shards.cli",
        "turn DICOM / PNG / JPEG / NIfTI corpora into verified WebDataset shards",
        "dinotrain shards build /data/cxr --name cxr --metadata meta.csv --out /data/shards/cxr",
    ),
    "curate": (
        "dinotrain.curate.cli",
        "near-duplicates (also against eval test sets) and balanced sampling: a selection the loader filters by",
        "dinotrain curate /data/shards/cxr --against jsrt_nodule --target 50000 --out curated/cxr",
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
        "launch.jobs.cli",
        "submit a training run (and its evaluation) to SLURM, or run it locally",
        "dinotrain launch configs/pretrain/vitb14_cxr.yaml launch.nodes=4 launch.tasks_per_node=8 --dry-run",
    ),
    "sweep": (
        "launch.sweeps.sweep_cli",
        "run data-scaling sweeps (size x diversity) as job arrays and report scaling curves",
        "dinotrain sweep configs/sweeps/data_scaling.yaml && dinotrain sweep report runs/data_scaling",
    ),
    "study": (
        "launch.study.study",
        "the laptop study on real images: SSL vs random init, continual pretraining, data scaling, with CIs",
        "dinotrain study study_out --seed 0 && dinotrain study --combine out0 out1 out2 --out out0",
    ),
    "eval": (
        "dinotrain.eval.cli",
        "evaluate frozen features: kNN/linear probes, attributes, segmentation, text alignment",
        "dinotrain eval runs/cxr_base random:vit_base --tasks jsrt_nodule,jsrt_sex --data ../shared/data",
    ),
    "verify": (
        "dinotrain.train.verify_cli",
        "check each checkpoint of a run against its manifest; name the one resume, eval and export use",
        "dinotrain verify runs/cxr_base",
    ),
    "export": (
        "dinotrain.export_cli",
        "export a checkpoint's teacher to Hugging Face or DINOv2 format",
        "dinotrain export runs/cxr_base --format hf --out exported/cxr_base",
    ),
    "demo": (
        "launch.demo",
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
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of errors (anywhere on the line; or set {DEBUG_ENV}=1)")
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


def _is_worker_copy() -> bool:
    """A non-zero rank of torchrun / a SLURM task. The user errors of a run (config, run folder, weights,
    data) are the same on every rank: rank 0 says it once, the others only exit non-zero."""
    import os

    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    return rank.strip() not in ("", "0")


def _tell_torchrun(message: str) -> None:
    """Under torchrun, the agent's failure summary shows the first failed worker's error file (else only
    a link to torch's docs): hand it the same one line, in torchelastic's error-file format."""
    import json
    import os
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    info = {"py_callstack": message, "timestamp": str(int(time.time()))}
    with open(path, "w") as f:
        json.dump({"message": {"message": message, "extraInfo": info}}, f)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere (also after a nested action such as `data preview`)
    debug = debug_requested("--debug" in argv)
    argv = [a for a in argv if a != "--debug"]
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = describe(e)
        if message is None or debug:
            raise  # a bug (or --debug): the traceback is the report
        if not _is_worker_copy():
            print(f"dinotrain {args.command}: error: {message}", file=sys.stderr)
        # every rank: torchrun's root cause is whichever worker exited first, rank 0 or not
        _tell_torchrun(message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
