"""Student and teacher networks, and the pure loss computation of one DINO + iBOT + KoLeo step.

`SSLNetwork` is one backbone with its DINO head (and optional iBOT head); the student and the
teacher are two instances of it. Its `forward` does everything a step needs from a network, so
FSDP2's root hooks (which fire on `forward`) cover the whole computation.

`compute_losses(student_out, teacher, batch, ssl, n_global_crops, teacher_temp)` is a pure
function from network outputs (the teacher's as `TeacherTargets`) to the named `LossTerms`, with
DINOv2's normalisations, so it can be tested against explicit re-derivations without any model.
It reads the recipe from the config's `ssl` section itself; only the scheduled temperature is
the step's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import nn

from dinotrain.config import SSLConfig
from dinotrain.losses import dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp, softmax_center

if TYPE_CHECKING:
    from dinotrain.data.loader import Batch


class SSLNetwork(nn.Module):
    """Backbone + DINO head (+ iBOT head). Student: `forward(global, local, masks, idx)`;
    teacher: `forward(global, None, None, idx)` (no masking, no local crops)."""

    def __init__(self, backbone: nn.Module, dino_head: nn.Module, ibot_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_indices: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        has_local = local_crops is not None and local_crops.shape[0] > 0
        if has_local:
            g, loc = self.backbone.forward_features_list([global_crops, local_crops], [masks, None])
        else:
            g, loc = self.backbone.forward_features(global_crops, masks), None
        cls_g = g["x_norm_clstoken"]
        patches = g["x_norm_patchtokens"]
        if mask_indices is not None:
            masked = patches.flatten(0, 1).index_select(0, mask_indices)
        else:
            masked = patches.new_zeros(0, patches.shape[-1])
        # one head call over every token that needs the DINO head (fewer kernel launches and,
        # under FSDP, one all-gather of the head): local CLS, global CLS, masked patches
        parts = ([loc["x_norm_clstoken"]] if has_local else []) + [cls_g]
        if self.ibot_head is None:
            parts.append(masked)
        out, z = self.dino_head(torch.cat(parts, dim=0), return_bottleneck=True)
        sizes = [p.shape[0] for p in parts]
        chunks = list(out.split(sizes, dim=0))
        # the global crops' bottleneck vectors, for the head-collapse monitor (no copy: a view)
        n_local = sizes[0] if has_local else 0
        res = {"global_cls": cls_g, "global_cls_bottleneck": z[n_local:n_local + cls_g.shape[0]]}
        if has_local:
            res["local_cls_logits"] = chunks.pop(0)
        else:
            res["local_cls_logits"] = out.new_zeros(0, out.shape[-1])
        res["global_cls_logits"] = chunks.pop(0)
        res["masked_patch_logits"] = chunks.pop(0) if self.ibot_head is None else self.ibot_head(masked)
        return res


@dataclass(frozen=True)
class TeacherTargets:
    """What the losses need from the teacher's side of a step: its logits, the masked-patch
    count of all ranks (Sinkhorn's normaliser) and the running centres (softmax-centring)."""

    cls_logits: torch.Tensor  # [n_global*B, K]
    masked_patch_logits: torch.Tensor  # [M, K]
    n_masked_total: torch.Tensor | None = None  # over every rank; None: this rank's rows only
    dino_center: torch.Tensor | None = None
    ibot_center: torch.Tensor | None = None
    global_cls_bottleneck: torch.Tensor | None = None  # for the head-collapse monitor

    @classmethod
    def from_teacher(cls, t_out: dict[str, torch.Tensor], **extra) -> TeacherTargets:
        """From `SSLNetwork.forward`'s output of the teacher, plus the step's `extra` fields."""
        return cls(cls_logits=t_out["global_cls_logits"], masked_patch_logits=t_out["masked_patch_logits"],
                   global_cls_bottleneck=t_out["global_cls_bottleneck"], **extra)


@dataclass(frozen=True)
class LossTerms:
    """The named terms of one step's loss; their names are the metrics' keys."""

    total_loss: torch.Tensor
    dino_global_crops_loss: torch.Tensor
    dino_local_crops_loss: torch.Tensor
    ibot_loss: torch.Tensor
    koleo_loss: torch.Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def stacked(self) -> torch.Tensor:
        """The terms as one float vector in `names()` order (one all-reduce for all of them)."""
        return torch.stack([getattr(self, k).detach().float() for k in self.names()])


def teacher_targets(teacher: TeacherTargets, ssl: SSLConfig, teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred teacher probabilities for the CLS tokens [n_global*B, K] and masked patches [M, K].

    Sinkhorn-Knopp normalises over every rank's batch (the loss module reduces when a process
    group is up), with the masked-patch count of all ranks (`n_masked_total`). Softmax-centring
    uses the running centres in `teacher` (their update is the caller's: pure here). `ssl`: the
    config's section (or an `SSLConfig`); `teacher_temp`: the step's scheduled value.
    """
    cls_logits = teacher.cls_logits.float()
    patch_logits = teacher.masked_patch_logits.float()
    iters = int(ssl.sinkhorn_iterations)
    if ssl.centering == "sinkhorn_knopp":
        cls_t = sinkhorn_knopp(cls_logits, teacher_temp, n_iterations=iters)
        n_total = teacher.n_masked_total
        if n_total is not None and int(n_total) == 0:
            patch_t = patch_logits  # empty: no masked patch anywhere (Sinkhorn would divide by 0)
        else:
            patch_t = sinkhorn_knopp(patch_logits, teacher_temp, n_iterations=iters, n_samples=n_total)
    elif ssl.centering == "softmax_center":
        cls_t = softmax_center(cls_logits, teacher.dino_center, teacher_temp)
        patch_t = softmax_center(patch_logits, teacher.ibot_center, teacher_temp)
    else:
        raise ValueError(f"ssl.centering={ssl.centering!r}: use sinkhorn_knopp or softmax_center")
    return cls_t, patch_t


def compute_losses(student_out: dict, teacher: TeacherTargets, batch: Batch, ssl: SSLConfig, n_global_crops: int,
                   teacher_temp: float) -> LossTerms:
    """DINO (global + local), iBOT and KoLeo terms and their weighted sum, DINOv2's normalisation.

    - DINO: every student crop against every teacher global crop except its own view; the sum
      over pairs of batch-mean cross-entropies, divided by the number of pairs.
    - iBOT: masked-patch cross-entropy, each image's patches weighted by 1 / its masked count,
      summed, divided by the number of global crops (`masks_weight` from the loader).
    - KoLeo: on the student's backbone CLS of each global crop separately, summed over crops.
    `total_loss` = dino_weight * (global + local) + ibot_weight * ibot + koleo_weight * koleo
    (the `ssl` section's `*_loss_weight`); `n_global_crops`: `data.global_crops_number`.
    """
    n_g = int(n_global_crops)
    student_temp = float(ssl.student_temp)
    cls_t, patch_t = teacher_targets(teacher, ssl, teacher_temp)
    teacher_chunks = cls_t.chunk(n_g)
    s_global = student_out["global_cls_logits"].chunk(n_g)
    B = s_global[0].shape[0]
    local = student_out["local_cls_logits"]
    n_l = local.shape[0] // B if B else 0
    denom = (n_g - 1) * n_g + max(n_l * n_g, 1)  # global pairs + local pairs (at least 1)

    glob = sum(
        dino_loss([s_global[i]], [teacher_chunks[j]], student_temp=student_temp)
        for i in range(n_g)
        for j in range(n_g)
        if i != j
    ) if n_g > 1 else local.new_zeros(())
    if n_l > 0:
        loc = dino_loss(list(local.chunk(n_l)), list(teacher_chunks), student_temp=student_temp) / denom
    else:
        loc = local.new_zeros(())
    s_patch = student_out["masked_patch_logits"]
    if s_patch.shape[0] > 0:
        ibot = ibot_loss(s_patch, patch_t, batch["masks"], student_temp=student_temp,
                         masks_weight=batch.get("masks_weight"))
    else:
        ibot = s_patch.sum() * 0.0  # keeps the graph (and FSDP's reduce) whole
    koleo = sum(koleo_loss(c.float()) for c in student_out["global_cls"].chunk(n_g))
    glob = glob / denom
    total = (float(ssl.dino_loss_weight) * (glob + loc) + float(ssl.ibot_loss_weight) * ibot
             + float(ssl.koleo_loss_weight) * koleo)
    return LossTerms(total_loss=total, dino_global_crops_loss=glob, dino_local_crops_loss=loc, ibot_loss=ibot,
                     koleo_loss=koleo)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, on local shards.

    Student and teacher are sharded identically, so each rank updates its own shard with no
    communication; `to_local()` unwraps FSDP2's DTensors.
    """
    t_params, s_params = [], []
    for (tn, tp), (sn, sp) in zip(teacher.named_parameters(), student.named_parameters()):
        if tn != sn:
            raise RuntimeError(f"teacher and student differ: parameter {tn!r} vs {sn!r}")
        t_params.append(tp.to_local() if hasattr(tp, "to_local") else tp)
        s_params.append(sp.to_local() if hasattr(sp, "to_local") else sp)
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
