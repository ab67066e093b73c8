"""`Scored`: one metric of one model on one task as a function of the test items, and the
train/val/test index split every task kind scores on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dinotrain.eval.errors import SpecError

if TYPE_CHECKING:
    from dinotrain.eval.specs import TaskData


@dataclass
class Scored:
    """One metric of one model on one task, as a function of the evaluated items.

    `fn(idx)` scores the items `idx` (positions in 0..n-1), so a bootstrap can resample them and
    two models scored on the same items can be compared with the same resamples (a paired CI).
    `fn=None` for a fixed value (chance rows); `max_boot` caps slow metrics' resamples (BLEU).
    """

    model: str
    task: str
    kind: str
    metric: str
    fn: Callable[[np.ndarray], float] | None
    n: int
    groups: np.ndarray | None = None
    value: float | None = None
    max_boot: int | None = None
    chance: float | None = None  # the metric's value for an uninformed predictor, when it has one
    probe: dict[str, Any] | None = None  # what the probe chose on train + val (e.g. the ridge penalty)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.metric}"

    def point(self) -> float:
        return float(self.fn(np.arange(self.n))) if self.fn is not None else float(self.value)


def scored(model: str, task: TaskData, kind: str, metric: str, fn, idx: np.ndarray,
           groups: np.ndarray | None = None, max_boot: int | None = None, chance: float | None = None,
           probe: dict[str, Any] | None = None) -> Scored:
    return Scored(model, task.spec.name, kind, metric, fn, int(len(idx)), groups, max_boot=max_boot, chance=chance,
                  probe=probe)


def splits(task: TaskData, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = []
    for s in ("train", "val", "test"):
        idx = task.indices(s)
        if keep is not None:
            idx = idx[keep[idx]]
        out.append(idx)
    tr, va, te = out
    if len(tr) == 0 or len(te) == 0:
        raise SpecError(f"task '{task.spec.name}': empty train or test split ({len(tr)} / {len(te)} samples); "
                        "use more samples (--max-samples) or other split_fractions")
    return tr, va, te


def as_validation(task: TaskData) -> TaskData:
    """The task with its val split as the split scored and its test split unread: decisions (a
    budget, a recipe) made with `split: val` never see a test image. The probes still choose their
    settings on a "val" split: every fifth group of train (in a fixed hashed order) takes its place.
    A task without a val split cannot be scored this way (one line naming it)."""
    import dataclasses
    import hashlib

    val = task.split == "val"
    if not val.any():
        raise SpecError(f"task '{task.spec.name}': no val split to score (its split_fractions give val 0, or its "
                        "split column has no val rows); use split test or give it a val share")
    keep = np.flatnonzero(task.split != "test")  # test rows are dropped: not even their images are read
    split = np.where(val, "test", task.split)[keep].astype(object)
    groups = task.groups[keep]
    for j in range(len(keep)):
        if split[j] == "train" and int(hashlib.sha1(str(groups[j]).encode()).hexdigest()[:8], 16) % 5 == 0:
            split[j] = "val"
    return dataclasses.replace(task, keys=[task.keys[i] for i in keep], images=[task.images[i] for i in keep],
                               rows=[task.rows[i] for i in keep], split=split.astype(str), groups=groups)
