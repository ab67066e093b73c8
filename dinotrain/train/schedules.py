"""Per-step values of the recipe's schedules, as pure functions of the step.

Everything that changes with the step (lr, weight decay, teacher momentum, teacher temperature,
last-layer freezing) is computed here from the config and the step alone, so a resumed run only
needs the step to be back on the same curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from `start` (step 0) to `end` (step `total`); clamped outside [0, total]."""
    if total <= 0:
        return end
    t = min(max(step, 0), total) / total
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def linear_ramp(step: int, warmup: int, start: float, end: float) -> float:
    """Step `step` of DINOv2's warm-up, `np.linspace(start, end, warmup)`: `start` at step 0 and
    `end` already at step `warmup - 1` (the last warm-up step)."""
    if warmup <= 1:
        return start
    return start + (end - start) * max(step, 0) / (warmup - 1)


def warmup_cosine(step: int, total: int, peak: float, end: float, warmup: int, warmup_start: float = 0.0) -> float:
    """Linear warm-up from `warmup_start` to `peak` over `warmup` steps, then cosine to `end`
    (DINOv2's `CosineScheduler`).

    A warm-up longer than the run is cut to the run (the config refuses one; this keeps the
    function total rather than dividing by a negative cosine length).
    """
    warmup = min(max(warmup, 0), total)
    if step < warmup:
        return linear_ramp(step, warmup, warmup_start, peak)
    return cosine(step - warmup, total - warmup, peak, end)


def linear_warmup_then_constant(step: int, warmup: int, start: float, final: float) -> float:
    """DINO's teacher temperature: linear from `start` to `final` over `warmup` steps (reaching
    `final` at step `warmup - 1`, as DINOv2's linspace), then flat."""
    if warmup <= 0 or step >= warmup:
        return final
    return linear_ramp(step, warmup, start, final)


def scaled_lr(base_lr: float, global_batch: int, scaling: str) -> float:
    """The peak lr: DINOv2 scales the base lr (given for 1024 images) by sqrt(batch / 1024)."""
    if scaling == "sqrt_wrt_1024":
        return base_lr * math.sqrt(global_batch / 1024.0)
    if scaling == "none":
        return base_lr
    raise ValueError(f"optim.lr_scaling={scaling!r}: use 'sqrt_wrt_1024' or 'none'")


@dataclass(frozen=True)
class StepValues:
    """What the optimiser, the EMA and the losses need at one step."""

    lr: float
    last_layer_lr: float
    wd: float
    momentum: float
    teacher_temp: float

    def as_dict(self) -> dict[str, float]:
        return {
            "lr": self.lr,
            "last_layer_lr": self.last_layer_lr,
            "wd": self.wd,
            "momentum": self.momentum,
            "teacher_temp": self.teacher_temp,
        }


@dataclass(frozen=True)
class Schedules:
    """All schedules of a run; `at(step)` gives the values used for optimisation step `step` (0-based)."""

    total_steps: int
    peak_lr: float
    min_lr: float
    warmup_steps: int
    wd_start: float
    wd_end: float
    momentum_start: float
    momentum_end: float
    teacher_temp_start: float
    teacher_temp_final: float
    teacher_temp_warmup: int
    freeze_last_layer_steps: int

    @classmethod
    def from_config(cls, optim, ssl, train, global_batch: int) -> Schedules:
        """From the config's `optim`, `ssl` and `train` sections and the global batch size."""
        o, s = optim, ssl
        return cls(
            total_steps=int(train.max_steps),
            peak_lr=scaled_lr(float(o.lr), global_batch, o.lr_scaling),
            min_lr=float(o.min_lr),
            warmup_steps=int(o.warmup_steps),
            wd_start=float(o.weight_decay),
            wd_end=float(o.weight_decay_end),
            momentum_start=float(s.momentum_teacher),
            momentum_end=float(s.final_momentum_teacher),
            teacher_temp_start=float(s.warmup_teacher_temp),
            teacher_temp_final=float(s.teacher_temp),
            teacher_temp_warmup=int(s.warmup_teacher_temp_steps),
            freeze_last_layer_steps=int(o.freeze_last_layer_steps),
        )

    def at(self, step: int) -> StepValues:
        lr = warmup_cosine(step, self.total_steps, self.peak_lr, self.min_lr, self.warmup_steps)
        return StepValues(
            lr=lr,
            # the heads' last layer learns nothing while frozen (DINO: stabilises the start)
            last_layer_lr=0.0 if step < self.freeze_last_layer_steps else lr,
            wd=cosine(step, self.total_steps, self.wd_start, self.wd_end),
            momentum=cosine(step, self.total_steps, self.momentum_start, self.momentum_end),
            teacher_temp=linear_warmup_then_constant(
                step, self.teacher_temp_warmup, self.teacher_temp_start, self.teacher_temp_final
            ),
        )
