"""What a run carries from step to step besides the networks and the optimiser.

`TrainState` is typed and checkpointable by itself: `state_dict()` holds the tensors every rank
shares (saved through DCP under "train": step, non-finite count, loss scale, centres) and
`rank_state_dict()` what differs per rank (loader position, RNG states; saved as JSON).
`LossScaler` is fp16's dynamic loss scaling, on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinotrain.train.checkpoint import rng_state, set_rng_state
from dinotrain.train.distributed import all_reduce_sum


class LossScaler:
    """Dynamic loss scaling for fp16: gradients of an unscaled loss underflow in fp16, so the loss
    is multiplied by `scale` before backward; an overflow (a non-finite gradient on any rank)
    skips the step and halves the scale, `growth_interval` clean steps in a row double it.
    Disabled (bf16/fp32), it is the identity and never skips."""

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 1000):
        self.enabled = enabled
        self.growth_interval = growth_interval
        self.scale = torch.tensor(init_scale)
        self.good_steps = torch.zeros((), dtype=torch.long)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    @torch.no_grad()
    def unscale_(self, model: nn.Module) -> bool:
        """Divide `model`'s gradients by the scale; True when every rank's are finite."""
        if not self.enabled:
            return True
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                 for p in model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, 1.0 / float(self.scale))
        bad = torch.zeros((), device=grads[0].device if grads else "cpu")
        for g in grads:
            bad += (~torch.isfinite(g)).any()
        return float(all_reduce_sum(bad)) == 0

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale /= 2
            self.good_steps.zero_()
            return
        self.good_steps += 1
        if int(self.good_steps) % self.growth_interval == 0:
            self.scale *= 2

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"loss_scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.scale.copy_(state["loss_scale"])
        self.good_steps.copy_(state["good_steps"])


@dataclass
class TrainState:
    """Step counter, non-finite step count, loss scaler, softmax centres, and (per rank) the
    loader's position and the RNG states."""

    dino_center: torch.Tensor
    ibot_center: torch.Tensor
    scaler: LossScaler
    loader: Any = None  # anything with state_dict/load_state_dict (the training loader)
    step: int = 0
    nonfinite: int = 0

    @classmethod
    def create(cls, n_prototypes: int, device: torch.device, fp16: bool, loader: Any = None) -> TrainState:
        return cls(dino_center=torch.zeros(1, n_prototypes, device=device),
                   ibot_center=torch.zeros(1, n_prototypes, device=device),
                   scaler=LossScaler(enabled=fp16), loader=loader)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors every rank shares (what DCP saves under "train"; DCP loads into them in
        place, then `load_state_dict` reads them back)."""
        return {
            "step": torch.tensor(self.step, dtype=torch.long),
            "nonfinite": torch.tensor(self.nonfinite, dtype=torch.long),
            "dino_center": self.dino_center,
            "ibot_center": self.ibot_center,
            **self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.step = int(state["step"])
        self.nonfinite = int(state["nonfinite"])
        self.dino_center = state["dino_center"].to(self.dino_center.device)
        self.ibot_center = state["ibot_center"].to(self.ibot_center.device)
        self.scaler.load_state_dict(state)

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own state: where its loader is, and its RNG states."""
        return {"loader": self.loader.state_dict() if self.loader is not None else None, "rng": rng_state()}

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        if self.loader is not None and state.get("loader") is not None:
            self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
