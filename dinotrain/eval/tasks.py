"""Run one task on one model's frozen features and return result records.

`prepare_targets(task, settings)` reads what does not depend on the model (labels, masks,
text embeddings) once; `evaluate(task, targets, feats, model_name, settings)` fits the probes
on train (+ val for model selection) and scores the test split. Every record has the fields
documented in `dinotrain.eval.report`. What differs between task kinds lives in
`dinotrain.eval.kinds` (one class per kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dinotrain.config import EvalConfig, ModelConfig, default_of, opt
from dinotrain.eval import metrics
from dinotrain.eval.kinds import (
    ClassTargets,
    MaskTargets,
    TextTargets,
    ValueTargets,
    class_targets,
    kind_of,
    load_masks,
)
from dinotrain.eval.scored import Scored
from dinotrain.eval.specs import TaskData
from dinotrain.eval.threads import single_thread

__all__ = ["EvalSettings", "Scored", "Targets", "class_targets", "evaluate", "load_masks", "needs_patch_tokens",
           "prepare_targets", "score", "to_record"]

Targets = ClassTargets | ValueTargets | MaskTargets | TextTargets  # what a kind reads once per task


@dataclass
class EvalSettings(EvalConfig):
    """The schema's `eval` section plus what one evaluation run adds (the model's patch size, the
    seed, progress bars); `device` is resolved ("auto" is decided by `evaluate_models`)."""

    device: str = opt("cpu", "where features are extracted (resolved: cpu or cuda)", choices=("cpu", "cuda"))
    patch_size: int = opt(default_of(ModelConfig, "patch_size"), "the backbone's patch size (mask grid)")
    seed: int = opt(0, "seed of probes, splits of the bootstrap and random baselines")
    progress: bool = opt(True, "progress bars")


def needs_patch_tokens(task: TaskData) -> bool:
    return kind_of(task.spec).patch_tokens


def prepare_targets(task: TaskData, settings: EvalSettings) -> Targets:
    """What the task's kind reads once, whatever the model (labels, masks, text embeddings)."""
    return kind_of(task.spec).targets(task, settings)


# ----------------------------------------------------------------------------- evaluation
def to_record(s: Scored, settings: EvalSettings) -> dict[str, Any]:
    """A results.json record: the value on all items and its 95% (patient-grouped) bootstrap CI."""
    lo = hi = float("nan")
    if s.fn is not None:
        n_boot = settings.bootstrap if s.max_boot is None else min(settings.bootstrap, s.max_boot)
        lo, hi = metrics.bootstrap_ci(s.fn, s.n, n_boot, settings.seed, s.groups)
    rec = {"model": s.model, "task": s.task, "kind": s.kind, "metric": s.metric, "split": settings.split,
           "value": s.point(), "ci_low": lo, "ci_high": hi, "n": int(s.n)}
    if s.chance is not None:
        rec["chance"] = float(s.chance)
    if s.probe is not None:
        rec["probe"] = dict(s.probe)
    return rec


def evaluate(task: TaskData, targets: Targets, feats: dict[str, np.ndarray], model: str,
             settings: EvalSettings) -> list[dict[str, Any]]:
    """The task's result records for one model (values with bootstrap CIs)."""
    scored = score(task, targets, feats, model, settings)
    with single_thread():
        return [to_record(s, settings) for s in scored]


def score(task: TaskData, targets: Targets, feats: dict[str, np.ndarray], model: str,
          settings: EvalSettings) -> list[Scored]:
    """Fit the task's probes on one model's features; every metric as a function of the test items."""
    with single_thread():
        return kind_of(task.spec).score(task, targets, feats, model, settings)
