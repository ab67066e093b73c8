"""When a run logs and exports: answers for a step, from the `train` config section (when it
checkpoints is the checkpoint manager's: `ckpt_manager.checkpoint_due`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SavePolicy:
    """`n` is the number of steps completed (the number that is logged and saved). The last step
    always logs and exports; `export_every=0` exports only there."""

    max_steps: int
    export_every: int
    log_every: int

    @classmethod
    def from_config(cls, train) -> SavePolicy:
        return cls(max_steps=int(train.max_steps), export_every=int(train.export_every),
                   log_every=int(train.log_every))

    def export_now(self, n: int) -> bool:
        return (self.export_every > 0 and n % self.export_every == 0) or n == self.max_steps

    def log_now(self, n: int, first: bool) -> bool:
        """`first`: the first step of this process (a resumed run logs where it restarted)."""
        return n % self.log_every == 0 or n == self.max_steps or first
