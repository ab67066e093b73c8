"""Backbone (DINOv2 ViT/14), DINO head, and weight import/export.

    from dinotrain.models import build_backbone, DINOHead
    model = build_backbone(cfg.model, device="cuda")        # meta-created, then init_weights
    from dinotrain.models.convert import from_hf, to_hf     # RAD-DINO / transformers weights

Names resolve lazily (PEP 562) so that `dinotrain export --help` does not import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "DINOHead": "heads",
    "WeightNormLinear": "heads",
    "build_head": "heads",
    "ARCHS": "vit",
    "Block": "vit",
    "VisionTransformer": "vit",
    "backbone_kwargs": "vit",
    "build_backbone": "vit",
    "init_weights": "vit",
    "vit_base": "vit",
    "vit_giant2": "vit",
    "vit_large": "vit",
    "vit_small": "vit",
    "vit_tiny": "vit",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dinotrain.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dinotrain.models.{_WHERE[name]}"), name)
