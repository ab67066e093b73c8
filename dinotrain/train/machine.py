"""Settings this machine cannot run, found before the loader or any process group starts.

`check_machine(cfg)` raises `UserError` (one line naming the setting and the fix) for a setting
that needs what the machine lacks: a CUDA device (train.device=cuda, data.device=gpu,
parallel.backend=nccl, xFormers' kernels) or the xFormers package. Without this, each fails
minutes later as a traceback from deep inside torch, DALI or the process group, once per rank.
It returns notes for GPU settings that do run here, but not as a user would guess: bf16/fp16 on
the CPU, GPUs asked for in `launch` on a machine without one.

Kept apart from `preflight` (files and folders): this one is about the machine that trains, so
`dinotrain launch` does not run it on a login node; the training entry does, on every node.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from dinotrain.errors import UserError


def _on_cpu(cfg: Any, cuda: bool) -> bool:
    """Whether the run trains on the CPU (train.device=cpu, or auto without CUDA)."""
    return str(cfg.train.device) == "cpu" or not cuda


def _refusals(cfg: Any, cuda: bool, has_xformers: bool) -> list[str]:
    out = []
    if str(cfg.train.device) == "cuda" and not cuda:
        out.append("train.device=cuda but this machine has no CUDA device: set train.device=cpu "
                   "(or auto: the GPU where there is one)")
    if str(cfg.data.device) == "gpu" and not cuda:
        out.append("data.device=gpu but this machine has no CUDA device: set data.device=cpu (or auto)")
    if str(cfg.parallel.backend) == "nccl" and _on_cpu(cfg, cuda):
        out.append("parallel.backend=nccl needs CUDA GPUs and this run trains on the CPU: set parallel.backend=gloo "
                   "(or auto: nccl on GPUs, gloo on the CPU)")
    if str(cfg.model.attn_backend) == "xformers":
        if not has_xformers:
            out.append("model.attn_backend=xformers but xFormers is not installed: pip install xformers (CUDA "
                       "builds only), or set model.attn_backend=auto (xFormers where it runs, else PyTorch's SDPA)")
        elif _on_cpu(cfg, cuda):
            out.append("model.attn_backend=xformers needs a CUDA device and this run trains on the CPU: set "
                       "model.attn_backend=auto or sdpa")
    return out


def _notes(cfg: Any, cuda: bool) -> list[str]:
    out = []
    if _on_cpu(cfg, cuda):
        mp = str(cfg.parallel.mixed_precision)
        if mp in ("bf16", "fp16"):
            out.append(f"parallel.mixed_precision={mp} on the CPU: this run computes in {mp} on the CPU (slower "
                       "than fp32 here, and not a test of a GPU's speed or kernels); parallel.mixed_precision=auto "
                       "uses fp32 on the CPU")
        if int(cfg.launch.gpus_per_node) > 0 and not cuda:
            out.append(f"launch.gpus_per_node={int(cfg.launch.gpus_per_node)} but this machine has no CUDA device: "
                       "this run trains on the CPU")
    return out


def check_machine(cfg: Any, cuda: bool | None = None, has_xformers: bool | None = None) -> list[str]:
    """Raise UserError for the first setting this machine cannot run; return one-line notes on
    GPU settings that run here differently. `cuda`, `has_xformers`: default to this machine's."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if has_xformers is None:
        has_xformers = importlib.util.find_spec("xformers") is not None
    refused = _refusals(cfg, cuda, has_xformers)
    if refused:
        raise UserError(refused[0])
    return _notes(cfg, cuda)
