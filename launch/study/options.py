"""The options of `dinotrain study`, spelled once: the study reads StudyOptions, and its flags are
generated from the fields' metadata (help, argparse keywords, the flag's name), as shards'
BuildOptions does. A field without `cli` metadata has no flag (--quick sets it from the settings).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from launch.study.settings import REPO, laptop

ARMS = ("ssl", "scaling", "continual", "curated")
DEFAULT_CONFIG = REPO / "configs" / "pretrain" / "laptop_real.yaml"


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in _list(text)]


def default_data_root() -> Path:
    """$DINOTRAIN_TEST_DATA, else shared/data beside this checkout."""
    return Path(os.environ.get("DINOTRAIN_TEST_DATA") or REPO.parent / "shared" / "data")


def _opt(help: str, **cli) -> dict:
    """Field metadata: the flag's help and argparse keywords (type, choices, action, metavar, flag)."""
    return {"help": help, "cli": cli}


@dataclass
class StudyOptions:
    out: Path
    seed: int = field(default=0, metadata=_opt("train.seed and data.seed of every run (default 0)", type=int))
    data_root: Path = field(default_factory=default_data_root, metadata=_opt(
        "folder holding jsrt/, covid_cxr/, ... (default $DINOTRAIN_TEST_DATA, else ../shared/data)", flag="--data",
        metavar="DATA"))
    config: Path = field(default=DEFAULT_CONFIG, metadata=_opt(
        "the pretraining recipe (default: configs/pretrain/laptop_real.yaml of this checkout)"))
    minutes: float = field(default=42.0, metadata=_opt(
        "wall-clock budget on an idle 2-core machine that sizes the default --steps (42)", type=float))
    steps: int | None = field(default=None, metadata=_opt(
        "training steps of every run (default: the recipe's, lowered to fit --minutes)", type=int))
    sizes: list[int] | None = field(default=None, metadata=_opt(
        "sweep sizes in training images, e.g. 40,130,400 (default: the CXR pool /9, /3, all)", type=_ints))
    tasks: list[str] = field(default_factory=lambda: [*laptop().cxr_tasks, *laptop().other_tasks,
                                                      *laptop().seg_tasks],
                             metadata=_opt("SSL-vs-random tasks (comma-separated)", type=_list))
    continual_tasks: list[str] = field(default_factory=lambda: [*laptop().cxr_tasks, *laptop().seg_tasks])
    scaling_tasks: list[str] = field(default_factory=lambda: list(laptop().scaling_tasks))
    curve_tasks: list[str] = field(default_factory=lambda: list(laptop().curve_tasks))
    arms: list[str] = field(default_factory=lambda: list(ARMS), metadata=_opt(
        "which arms to run (comma-separated, default all): ssl (one longer run on the whole pool, its learning "
        "curve, SSL vs its initial weights), scaling (the sweep), continual, curated (curated vs random subset)",
        type=_list))
    curve_points: int | None = field(default=None, metadata=_opt(
        "learning-curve checkpoints of the SSL run after step 0 (default: configs/study/laptop.yaml budget)",
        type=int))
    eval_split: str = field(default="test", metadata=_opt(
        "the split every evaluation scores: test (the study), or val for decisions such as the budget pilot "
        "(test images are then not read)", choices=("test", "val")))
    resolution: int = field(default=112, metadata=_opt("eval input size (default 112; 518 is slow on CPU)", type=int))
    bootstrap: int = field(default=1000, metadata=_opt("bootstrap resamples of every CI (default 1000)", type=int))
    seg_steps: int = 300
    max_samples: int | None = None
    shard_size: int = 80
    images_per_group: int | None = None
    cluster: str = field(default="auto", metadata=_opt(
        "auto: SLURM when sbatch is installed and squeue answers, else local jobs", choices=("auto", "slurm", "local")))
    overrides: list[str] = field(default_factory=list, metadata=_opt(
        "run-config override for every run (repeatable), e.g. --set data.num_threads=2", flag="--set",
        action="append", metavar="KEY=VALUE"))
    quick: bool = field(default=False, metadata=_opt(
        "a shrunk study in minutes (2 steps, 18 images per group, 2 tasks): checks the machinery, not the science",
        action="store_true"))
    reevaluate: bool = field(default=False, metadata=_opt(
        "evaluate again the runs an earlier invocation trained (the sweep runs' own CXR probes too), e.g. after a "
        "probe or metric change; trains nothing (refuses if a run is not done), frozen features come from "
        "OUT/cache, study.json keeps the training invocation's wall clock", action="store_true"))


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per StudyOptions field with `cli` metadata; default None = not given (the field's default)."""
    for f in fields(StudyOptions):
        if "cli" not in f.metadata:
            continue
        cli = dict(f.metadata["cli"])
        flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
        parser.add_argument(flag, dest=f.name, default=None, help=f.metadata["help"], **cli)


def options_from_args(args: argparse.Namespace) -> StudyOptions:
    """The options: the fields' defaults, then --quick's (configs/study/laptop.yaml), then the flags given;
    --set overrides add to --quick's."""
    kw: dict = {}
    if args.quick:
        names = {f.name for f in fields(StudyOptions)}
        unknown = sorted(set(laptop().quick) - names)
        if unknown:
            raise ValueError(f"configs/study/laptop.yaml quick: unknown option(s) {', '.join(unknown)}: "
                             f"use StudyOptions fields ({', '.join(sorted(names))})")
        kw.update(laptop().quick, quick=True)
    given = {f.name: getattr(args, f.name) for f in fields(StudyOptions)
             if "cli" in f.metadata and getattr(args, f.name) is not None}
    given["overrides"] = [*kw.get("overrides", []), *(args.overrides or [])]
    opts = StudyOptions(**{**kw, **given, "out": Path(args.out)})
    opts.out, opts.data_root, opts.config = (Path(p).absolute() for p in (opts.out, opts.data_root, opts.config))
    unknown = [a for a in opts.arms if a not in ARMS]
    if unknown or not opts.arms:
        raise ValueError(f"--arms {','.join(opts.arms)}: give some of {', '.join(ARMS)}")
    if "curated" in opts.arms and "scaling" not in opts.arms:
        raise ValueError("--arms curated compares with the sweep's random subset of the same size: add scaling")
    return opts
