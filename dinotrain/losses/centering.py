"""Teacher targets: softmax with a running centre, or Sinkhorn-Knopp (DINOv2's two centrings).

Pure functions. A cross-process sum happens only when `distributed` is True, or when it is
None (the default) and a torch.distributed process group is initialised; `group` picks the
process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def is_distributed(distributed: bool | None) -> bool:
    if distributed is None:
        return dist.is_available() and dist.is_initialized()
    return bool(distributed)


def world_size(distributed: bool | None, group=None) -> int:
    return dist.get_world_size(group) if is_distributed(distributed) else 1


def all_reduce_sum(t: torch.Tensor, distributed: bool | None = None, group=None) -> torch.Tensor:
    """Sum of `t` over the processes (in place, returned); the identity outside distributed runs."""
    if is_distributed(distributed):
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


@torch.no_grad()
def softmax_center(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """softmax((teacher_logits - center) / temp) over prototypes (DINOv2's `softmax_center_teacher`)."""
    return F.softmax((teacher_logits - center) / temp, dim=-1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9,
                  distributed: bool | None = None, group=None) -> torch.Tensor:
    """The DINO (CLS) centre: momentum * center + (1 - momentum) * mean of the teacher logits over
    all rows of all processes (every process holds the same number of rows, as in DINOv2).
    `teacher_logits` is [..., K]; leading dims are flattened."""
    logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    batch_center = all_reduce_sum(logits.sum(dim=0, keepdim=True), distributed, group)
    n = logits.shape[0] * world_size(distributed, group)
    batch_center = batch_center / n
    return center * momentum + batch_center.to(center.dtype) * (1 - momentum)


@torch.no_grad()
def update_center_mean_of_ranks(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9,
                                distributed: bool | None = None, group=None) -> torch.Tensor:
    """The iBOT (masked patch) centre as DINOv2 updates it: the mean over processes of each
    process's mean row, so a process with 40 masked patches weighs as much as one with 200.

    Every process returns the same centre. A process with no rows has no mean: it is left out
    of the average (DINOv2 would produce NaN there), and when no process has a row the centre
    is kept as it is. `teacher_logits` is [..., K]; leading dims are flattened.
    """
    logits = teacher_logits.reshape(-1, teacher_logits.shape[-1]).float()
    n_rows = logits.shape[0]
    # one reduction: [sum of the per-process means | number of processes that had rows]
    packed = torch.zeros(1, logits.shape[-1] + 1, device=logits.device, dtype=torch.float32)
    if n_rows > 0:
        packed[:, :-1] = logits.mean(dim=0, keepdim=True)
        packed[:, -1] = 1.0
    packed = all_reduce_sum(packed, distributed, group)
    contributors = packed[:, -1:]
    batch_center = packed[:, :-1] / contributors.clamp_min(1.0)
    new = center * momentum + batch_center.to(center.dtype) * (1 - momentum)
    return torch.where(contributors > 0, new, center)  # no host sync: decided on the device


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, n_iterations: int = 3,
                   n_samples: int | torch.Tensor | None = None, distributed: bool | None = None,
                   group=None) -> torch.Tensor:
    """DINOv2's `sinkhorn_knopp_teacher`, in fp32: an [B, K] assignment whose rows sum to 1 and
    whose prototype marginals are equal (sum over all processes' rows = B_total / K each).

    `n_samples`: the number of rows over ALL processes (for iBOT: the total masked patches);
    default B * world_size.
    """
    Q = torch.exp(teacher_logits.float() / temp).t()  # K x B, the paper's notation
    K = Q.shape[0]
    if n_samples is None:
        B = Q.shape[1] * world_size(distributed, group)
    else:
        B = n_samples.to(Q) if isinstance(n_samples, torch.Tensor) else float(n_samples)
    sum_Q = all_reduce_sum(Q.sum(), distributed, group)
    Q = Q / sum_Q
    for _ in range(n_iterations):
        # each prototype gets 1/K of the mass, then each sample 1/B
        sum_of_rows = all_reduce_sum(Q.sum(dim=1, keepdim=True), distributed, group)
        Q = Q / sum_of_rows / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    Q = Q * B  # columns sum to 1: each sample's assignment is a distribution
    return Q.t()
