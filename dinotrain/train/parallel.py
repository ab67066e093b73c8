"""All parallelism in one place: activation checkpointing, torch.compile, FSDP2 with mixed precision.

`parallelize(net, parallel, device, ...)` is the single function that decides how a network is
distributed and at what precision; the loop never branches on it again.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def param_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype of parameters: `auto` is bf16 on GPU and fp32 on CPU."""
    if mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[mixed_precision]


def _selective_policy_ops() -> set:
    """Ops whose outputs are kept under selective AC: matmuls and attention (expensive to redo);
    everything else (norms, activations, adds) is recomputed in backward."""
    aten = torch.ops.aten
    names = [
        "mm.default", "addmm.default", "bmm.default", "convolution.default",
        "_scaled_dot_product_flash_attention.default", "_scaled_dot_product_efficient_attention.default",
        "_scaled_dot_product_cudnn_attention.default", "_scaled_dot_product_flash_attention_for_cpu.default",
    ]
    ops = set()
    for n in names:
        packet, overload = n.split(".")
        op = getattr(getattr(aten, packet, None), overload, None) if hasattr(aten, packet) else None
        if op is not None:
            ops.add(op)
    return ops


def apply_activation_checkpointing(block: nn.Module, mode: str) -> None:
    """Recompute the block's activations in backward: all of them (`full`) or all but the
    matmul / attention outputs (`selective`). The module and its parameter names are unchanged
    (the checkpointed forward is installed on the instance), so checkpoints stay compatible."""
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    if mode == "none":
        return
    inner = block.forward
    if mode == "full":
        def forward(*args, **kwargs):
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
    elif mode == "selective":
        keep = _selective_policy_ops()

        def policy(ctx, op, *args, **kwargs):
            return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

        context_fn = functools.partial(create_selective_checkpoint_contexts, policy)

        def forward(*args, **kwargs):
            return checkpoint(inner, *args, use_reentrant=False, context_fn=context_fn, **kwargs)
    else:
        raise ValueError(f"parallel.activation_checkpointing={mode!r}: use none, selective or full")
    block.forward = forward


def parallelize(
    net: nn.Module,
    parallel,
    device: torch.device,
    world_size: int,
    *,
    trainable: bool,
) -> nn.Module:
    """Activation checkpointing (student only), compile, then FSDP2 per block, per head and at
    the root, with `MixedPrecisionPolicy` (bf16/fp16 compute, fp32 gradient reduction).

    Call on a meta-device network: `fully_shard` only records the sharding; materialise with
    `net.to_empty(device=...)` afterwards and initialise explicitly.
    """
    p = parallel  # the config's `parallel` section
    blocks = list(net.backbone.blocks)
    if trainable:
        for blk in blocks:
            apply_activation_checkpointing(blk, p.activation_checkpointing)
    if p.compile:
        for blk in blocks:
            blk.compile()  # in place: parameter names (and so checkpoints) are unchanged
    if not p.fsdp:
        if world_size > 1:
            raise ValueError(
                f"parallel.fsdp=false with {world_size} processes: set parallel.fsdp=true "
                "(data parallelism here is FSDP2) or run one process"
            )
        return net
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = param_dtype(p.mixed_precision, device)
    mp = MixedPrecisionPolicy(
        param_dtype=None if dtype == torch.float32 else dtype,
        reduce_dtype=torch.float32,
    )
    mesh = init_device_mesh(device.type, (world_size,))
    kw = dict(mesh=mesh, mp_policy=mp, reshard_after_forward=bool(p.reshard_after_forward))
    for blk in blocks:
        fully_shard(blk, **kw)
    for head in (net.dino_head, net.ibot_head):
        if head is not None:
            fully_shard(head, **kw)
    fully_shard(net, **kw)
    return net
