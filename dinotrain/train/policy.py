"""When a run logs, checkpoints and exports: answers for a step, from the `train` config section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SavePolicy:
    """`n` is the number of steps completed (the number that is logged and saved). The last step
    always logs, checkpoints and exports; `export_every=0` exports only there."""

    max_steps: int
    checkpoint_every: int
    export_every: int
    log_every: int

    @classmethod
    def from_config(cls, train) -> SavePolicy:
        return cls(max_steps=int(train.max_steps), checkpoint_every=int(train.checkpoint_every),
                   export_every=int(train.export_every), log_every=int(train.log_every))

    def checkpoint_now(self, n: int) -> bool:
        return n % self.checkpoint_every == 0 or n == self.max_steps

    def export_now(self, n: int) -> bool:
        return (self.export_every > 0 and n % self.export_every == 0) or n == self.max_steps

    def log_now(self, n: int, first: bool) -> bool:
        """`first`: the first step of this process (a resumed run logs where it restarted)."""
        return n % self.log_every == 0 or n == self.max_steps or first
