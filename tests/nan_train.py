"""`python tests/nan_train.py STEP dinotrain-args...`: `python -m dinotrain` whose loss is made NaN at
step STEP (1-based), to drive the trainer's real non-finite guard from a test.

The production step has no test hook; here the trainer's `compute_losses` is wrapped, for the
one step, in this process only: the DINO global term becomes NaN (and so the total), as a
diverging run's would, and everything after it (the all-reduced verdict, the skip or the stop,
the checkpoint named in the message) is the real code.
"""

from __future__ import annotations

import dataclasses
import sys

from dinotrain.train import trainer


def poison_step(step: int) -> None:
    """Make the losses of step `step` non-finite (for every later `Trainer` in this process)."""
    real_forward_backward, real_losses = trainer.Trainer.forward_backward, trainer.compute_losses

    def poisoned_losses(*args, **kwargs):
        t = real_losses(*args, **kwargs)
        nan = t.dino_global_crops_loss * float("nan")
        return dataclasses.replace(t, dino_global_crops_loss=nan, total_loss=t.total_loss + nan)

    def forward_backward(self, batch, teacher_temp, n):
        trainer.compute_losses = poisoned_losses if n == step else real_losses
        try:
            return real_forward_backward(self, batch, teacher_temp, n)
        finally:
            trainer.compute_losses = real_losses

    trainer.Trainer.forward_backward = forward_backward


if __name__ == "__main__":
    poison_step(int(sys.argv[1]))
    from dinotrain.cli import main

    sys.exit(main(sys.argv[2:]))
