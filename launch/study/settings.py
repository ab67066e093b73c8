"""The laptop study's experiment as data: configs/study/laptop.yaml read into typed dataclasses.

Task lists, the sweep's diversity groups, the time model of the plan and the --quick shrink live in
the YAML beside the recipe, so a change of the experiment is a change of data, not of code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import MISSING

REPO = Path(__file__).resolve().parents[2]
SETTINGS_FILE = REPO / "configs" / "study" / "laptop.yaml"


@dataclass(frozen=True)
class Timings:
    """Idle 2-core throughputs and fixed costs the plan's wall-clock estimate is made of (values: the YAML)."""

    train_img_per_s: float = MISSING  # at train_ref_tokens patch tokens per image
    train_ref_tokens: int = MISSING
    run_overhead_s: float = MISSING  # process start + loader per run
    shard_img_per_s: float = MISSING
    eval_img_per_s_112: float = MISSING  # frozen features at 112 px
    eval_fixed_s: float = MISSING


@dataclass(frozen=True)
class Budget:
    """How the training time is split between the arms (chosen on validation: see the YAML)."""

    ssl_steps_factor: float = MISSING  # the SSL run's steps = this x every other run's
    curve_points: int = MISSING  # learning-curve checkpoints of the SSL run after step 0 (evenly spaced)
    why: str = ""  # the evidence the split rests on (said in every report)


@dataclass(frozen=True)
class StudySettings:
    cxr_tasks: list[str] = field(default_factory=list)
    seg_tasks: list[str] = field(default_factory=list)
    other_tasks: list[str] = field(default_factory=list)
    scaling_tasks: list[str] = field(default_factory=list)
    curve_tasks: list[str] = field(default_factory=list)
    diversity: dict[str, list[str]] = field(default_factory=dict)
    scaling_pool: str = MISSING  # the group whose pool (after holding out) bounds the sweep's sizes
    stage1: list[str] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)
    timings: Timings = field(default_factory=Timings)
    quick: dict[str, Any] = field(default_factory=dict)  # StudyOptions field -> value (checked there)


def load_settings(path: Path = SETTINGS_FILE) -> StudySettings:
    """The YAML merged onto the schema (omegaconf refuses unknown keys and wrong types: one line naming them)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudySettings), OmegaConf.load(path)))
    except OmegaConfBaseException as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0]}: fix the study settings file") from None


@cache
def laptop() -> StudySettings:
    """configs/study/laptop.yaml, read once (a frozen value)."""
    return load_settings()
