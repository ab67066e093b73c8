"""AdamW parameter groups as DINOv2 builds them: layer-wise lr decay, patch-embed lr multiplier,
no weight decay on biases, norms and LayerScale gammas.

Groups carry multipliers (`lr_mult`, `wd_mult`, `is_last_layer`); `apply_step_values` turns the
schedules' lr/wd of a step into each group's actual lr/wd, so the optimiser state stays small and
the schedules stay pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from dinotrain.train.schedules import StepValues

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
# parameters before the first block: the token embedding side of the network
_EMBEDDING_NAMES = ("cls_token", "pos_embed", "mask_token", "register_tokens", "patch_embed")
# DINOv2 decays these (only biases, norms and LayerScale gammas are exempt); `decay_tokens=False`
# exempts them as many ViT recipes do (they are positions and tokens, not weights)
TOKEN_NAMES = ("cls_token", "pos_embed", "mask_token", "register_tokens")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for block i, num_layers + 1 for the rest (final norm, heads)."""
    if any(k in name for k in _EMBEDDING_NAMES):
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def param_multipliers(
    name: str, param: torch.Tensor, num_layers: int, layerwise_decay: float, patch_embed_lr_mult: float,
    decay_tokens: bool = True,
) -> dict:
    """(lr_mult, wd_mult, is_last_layer) of one named parameter, as in DINOv2's param groups
    (`decay_tokens=False` additionally exempts the tokens and position embeddings from decay)."""
    lr_mult = layerwise_decay ** (num_layers + 1 - layer_id(name, num_layers))
    if "patch_embed" in name:
        lr_mult *= patch_embed_lr_mult
    no_decay = (
        name.endswith(".bias")
        or "norm" in name  # LayerNorm weights (norm1, norm2, final norm, ...)
        or name.endswith(".gamma")  # LayerScale (DINOv2 naming)
        or "ls1" in name
        or "ls2" in name
        or (not decay_tokens and any(k in name for k in TOKEN_NAMES))
        or param.ndim <= 1  # any other vector (biases, norm scales) under other naming schemes
    )
    return {
        "lr_mult": float(lr_mult),
        "wd_mult": 0.0 if no_decay else 1.0,
        "is_last_layer": "last_layer" in name,
    }


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]], num_layers: int, layerwise_decay: float, patch_embed_lr_mult: float,
    decay_tokens: bool = True,
) -> list[dict]:
    """Parameters grouped by equal multipliers (few groups: fused AdamW kernels stay efficient)."""
    groups: dict[tuple, dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        m = param_multipliers(name, p, num_layers, layerwise_decay, patch_embed_lr_mult, decay_tokens)
        key = (m["lr_mult"], m["wd_mult"], m["is_last_layer"])
        g = groups.setdefault(key, {"params": [], "names": [], **m})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, optim, num_layers: int) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters with the recipe's groups (lr/wd set per step).
    `optim` is the config's `optim` section."""
    groups = param_groups(model.named_parameters(), num_layers, optim.layerwise_decay, optim.patch_embed_lr_mult,
                          bool(optim.decay_tokens))
    for g in groups:
        g.pop("names")  # kept out of the optimiser state dict (DCP keys it by parameter FQN)
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=(optim.beta1, optim.beta2))


def apply_step_values(optimizer: torch.optim.Optimizer, values: StepValues) -> None:
    """Set each group's lr and weight decay for this step from the schedules and its multipliers."""
    for g in optimizer.param_groups:
        base = values.last_layer_lr if g["is_last_layer"] else values.lr
        g["lr"] = base * g["lr_mult"]
        g["weight_decay"] = values.wd * g["wd_mult"]
