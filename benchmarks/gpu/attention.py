"""Packed multi-crop attention: one backend against SDPA, outputs and gradients, same weights and inputs.

On a GPU the candidate is xformers (one `memory_efficient_attention` call over all crops with a
block-diagonal mask, as training runs it); on the CPU it is `sdpa_dense`, the same packed
layout and mask through SDPA, so CI checks the layout the GPU path relies on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Crops:
    batch: int = 4
    global_size: int = 224
    local_size: int = 98
    n_local: int = 8


def _inputs(c: Crops, patch: int, device: torch.device, seed: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    xg = torch.randn(2 * c.batch, 3, c.global_size, c.global_size, generator=g)
    xl = torch.randn(c.n_local * c.batch, 3, c.local_size, c.local_size, generator=g)
    masks = torch.rand(2 * c.batch, (c.global_size // patch) ** 2, generator=g) < 0.3  # iBOT-masked tokens
    return [xg.to(device), xl.to(device)], [masks.to(device), None]


def _set_backend(model: torch.nn.Module, backend: str) -> None:
    from dinotrain.models.attention import Attention

    for m in model.modules():
        if isinstance(m, Attention):
            m.backend = backend


def forward_backward(model, xs, masks, backend: str, dtype: torch.dtype | None) -> tuple[list, dict]:
    """Outputs (CLS and patch tokens per crop size) and parameter gradients of one packed pass."""
    _set_backend(model, backend)
    model.zero_grad(set_to_none=True)
    dev = xs[0].device.type
    ctx = torch.autocast(dev, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with ctx:
        outs = model.forward_features_list(xs, masks)
    tensors = [t.float() for o in outs for t in (o["x_norm_clstoken"], o["x_norm_patchtokens"])]
    # a loss that weighs every output differently, so each gradient entry is exercised
    loss = sum((t * torch.linspace(-1, 1, t.shape[-1], device=t.device)).square().mean() for t in tensors)
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return [t.detach() for t in tensors], grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (inf when shapes differ, nan propagates)."""
    if a.shape != b.shape:
        return float("inf")
    scale = a.abs().max().clamp_min(1e-12)
    return float((a - b).abs().max() / scale)


def compare(arch: str, device: str, candidate: str, dtype: torch.dtype | None = None, crops: Crops = Crops(),
            seed: int = 0) -> dict:
    """Relative max differences of `candidate` vs `sdpa` on one packed multi-crop pass of `arch`."""
    from dinotrain.config import load_config
    from dinotrain.models import build_backbone

    dev = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
    cfg = load_config(None, [f"model.arch={arch}"])
    torch.manual_seed(seed)
    # LayerScale at 0.1, not DINOv2's 1e-5: at 1e-5 attention barely reaches the output
    model = build_backbone(cfg.model, dev, layerscale_init=0.1, drop_path_rate=0.0)
    xs, masks = _inputs(crops, int(cfg.model.patch_size), dev, seed)
    ref_out, ref_grad = forward_backward(model, xs, masks, "sdpa", dtype)
    out, grad = forward_backward(model, xs, masks, candidate, dtype)
    worst_grad = max(((_rel(ref_grad[n], grad[n]), n) for n in ref_grad), default=(float("inf"), "-"))
    return {
        "arch": arch, "candidate": candidate, "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "crops": f"{2 * crops.batch}x{crops.global_size} + {crops.n_local * crops.batch}x{crops.local_size}",
        "output_rel_diff": max(_rel(a, b) for a, b in zip(ref_out, out, strict=True)),
        "grad_rel_diff": worst_grad[0], "worst_grad_param": worst_grad[1],
        "params_with_grad": len(grad), "params_expected": len(ref_grad),
    }
