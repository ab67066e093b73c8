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
