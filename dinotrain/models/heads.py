"""DINOv2's projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes.

Parameter names are DINOv2's (`mlp.0`, `mlp.2`, `mlp.4`, `last_layer.weight_g`,
`last_layer.weight_v`), the layout of RAD-DINO's released `dino_head.safetensors`. The weight
norm is a plain module with two parameters (not `torch.nn.utils` hooks or parametrizations), so
it is created on the meta device, sharded by FSDP2 and frozen by zeroing grads like any Linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight is `weight_g * weight_v / ||weight_v||` per output row."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))

    @property
    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return v * (self.weight_g / torch.linalg.vector_norm(v, dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def reset_parameters(self) -> None:
        # DINOv2 wraps a default-initialised nn.Linear and sets g to 1
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
            self.weight_g.fill_(1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _build_mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3):
        super().__init__()
        nlayers = max(nlayers, 1)
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
        self.bottleneck_dim, self.nlayers = bottleneck_dim, nlayers
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if self.last_layer.weight_v.device.type != "meta":
            self.init_weights()

    def init_weights(self) -> None:
        """DINOv2's: trunc-normal(0.02) MLP weights, zero biases; last layer default init with g = 1."""
        with torch.no_grad():
            for m in self.mlp.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
        self.last_layer.reset_parameters()

    def forward(self, x: torch.Tensor, return_bottleneck: bool = False):
        """Prototype logits; with `return_bottleneck`, also the L2-normalised bottleneck vectors
        they come from (one call: FSDP2 gathers the head's parameters around `forward` only)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        z = F.normalize(x, dim=-1, p=2, eps=eps)
        logits = self.last_layer(z)
        return (logits, z) if return_bottleneck else logits


def build_head(in_dim: int, ssl_cfg=None, device: torch.device | str | None = None, **overrides) -> DINOHead:
    """A DINO head sized from the `cfg.ssl` section (head_* fields), on the meta device or materialised."""
    get = (lambda k, d: getattr(ssl_cfg, k, d)) if ssl_cfg is not None else (lambda k, d: d)
    kwargs = dict(
        out_dim=int(get("head_n_prototypes", 65536)),
        hidden_dim=int(get("head_hidden_dim", 2048)),
        bottleneck_dim=int(get("head_bottleneck_dim", 256)),
        nlayers=int(get("head_nlayers", 3)),
    )
    kwargs.update(overrides)
    with torch.device("meta"):
        head = DINOHead(in_dim, **kwargs)
    if device is not None and torch.device(device).type == "meta":
        return head
    head.to_empty(device=device if device is not None else "cpu")
    head.init_weights()
    return head
