"""Student and teacher networks, and the pure loss computation of one DINO + iBOT + KoLeo step.

`SSLNetwork` is one backbone with its DINO head (and optional iBOT head); the student and the
teacher are two instances of it. Its `forward` does everything a step needs from a network, so
FSDP2's root hooks (which fire on `forward`) cover the whole computation.

`compute_losses(student_out, teacher_out, batch, params)` is a pure function from network
outputs to named losses with DINOv2's normalisations, so it can be tested against explicit
re-derivations without any model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dinotrain.config import DataConfig, SSLConfig, default_of
from dinotrain.losses import dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp, softmax_center


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
class LossParams:
    """Everything `compute_losses` needs besides tensors: the step's values and the recipe
    (defaults: the schema's)."""

    teacher_temp: float
    student_temp: float = default_of(SSLConfig, "student_temp")
    n_global_crops: int = default_of(DataConfig, "global_crops_number")
    centering: str = default_of(SSLConfig, "centering")
    sinkhorn_iterations: int = default_of(SSLConfig, "sinkhorn_iterations")
    dino_weight: float = default_of(SSLConfig, "dino_loss_weight")
    ibot_weight: float = default_of(SSLConfig, "ibot_loss_weight")
    koleo_weight: float = default_of(SSLConfig, "koleo_loss_weight")

    @classmethod
    def from_config(cls, ssl, n_global_crops: int, teacher_temp: float) -> LossParams:
        """From the config's `ssl` section, `data.global_crops_number` and the step's temperature."""
        return cls(
            teacher_temp=float(teacher_temp),
            student_temp=float(ssl.student_temp),
            n_global_crops=int(n_global_crops),
            centering=str(ssl.centering),
            sinkhorn_iterations=int(ssl.sinkhorn_iterations),
            dino_weight=float(ssl.dino_loss_weight),
            ibot_weight=float(ssl.ibot_loss_weight),
            koleo_weight=float(ssl.koleo_loss_weight),
        )


def teacher_targets(teacher_out: dict, params: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred teacher probabilities for the CLS tokens [n_global*B, K] and masked patches [M, K].

    Sinkhorn-Knopp normalises over every rank's batch (the loss module reduces when a process
    group is up), with the masked-patch count of all ranks (`n_masked_total`). Softmax-centring
    uses the running centres passed in `teacher_out` (their update is the caller's: pure here).
    """
    cls_logits = teacher_out["cls_logits"].float()
    patch_logits = teacher_out["masked_patch_logits"].float()
    if params.centering == "sinkhorn_knopp":
        cls_t = sinkhorn_knopp(cls_logits, params.teacher_temp, n_iterations=params.sinkhorn_iterations)
        n_total = teacher_out.get("n_masked_total")
        if n_total is not None and int(n_total) == 0:
            patch_t = patch_logits  # empty: no masked patch anywhere (Sinkhorn would divide by 0)
        else:
            patch_t = sinkhorn_knopp(
                patch_logits, params.teacher_temp, n_iterations=params.sinkhorn_iterations, n_samples=n_total
            )
    elif params.centering == "softmax_center":
        cls_t = softmax_center(cls_logits, teacher_out["dino_center"], params.teacher_temp)
        patch_t = softmax_center(patch_logits, teacher_out["ibot_center"], params.teacher_temp)
    else:
        raise ValueError(f"ssl.centering={params.centering!r}: use sinkhorn_knopp or softmax_center")
    return cls_t, patch_t


def compute_losses(student_out: dict, teacher_out: dict, batch: dict, params: LossParams) -> dict[str, torch.Tensor]:
    """DINO (global + local), iBOT and KoLeo terms and their weighted sum, DINOv2's normalisation.

    - DINO: every student crop against every teacher global crop except its own view; the sum
      over pairs of batch-mean cross-entropies, divided by the number of pairs.
    - iBOT: masked-patch cross-entropy, each image's patches weighted by 1 / its masked count,
      summed, divided by the number of global crops (`masks_weight` from the loader).
    - KoLeo: on the student's backbone CLS of each global crop separately, summed over crops.
    `total_loss` = dino_weight * (global + local) + ibot_weight * ibot + koleo_weight * koleo.
    """
    n_g = params.n_global_crops
    cls_t, patch_t = teacher_targets(teacher_out, params)
    teacher_chunks = cls_t.chunk(n_g)
    s_global = student_out["global_cls_logits"].chunk(n_g)
    B = s_global[0].shape[0]
    local = student_out["local_cls_logits"]
    n_l = local.shape[0] // B if B else 0
    n_global_terms = (n_g - 1) * n_g
    n_local_terms = max(n_l * n_g, 1)
    denom = n_global_terms + n_local_terms

    glob = sum(
        dino_loss([s_global[i]], [teacher_chunks[j]], student_temp=params.student_temp)
        for i in range(n_g)
        for j in range(n_g)
        if i != j
    ) if n_g > 1 else local.new_zeros(())
    losses = {"dino_global_crops_loss": glob / denom}
    if n_l > 0:
        losses["dino_local_crops_loss"] = (
            dino_loss(list(local.chunk(n_l)), list(teacher_chunks), student_temp=params.student_temp) / denom
        )
    else:
        losses["dino_local_crops_loss"] = local.new_zeros(())

    s_patch = student_out["masked_patch_logits"]
    if s_patch.shape[0] > 0:
        losses["ibot_loss"] = ibot_loss(
            s_patch, patch_t, batch["masks"], student_temp=params.student_temp, masks_weight=batch.get("masks_weight")
        )
    else:
        losses["ibot_loss"] = s_patch.sum() * 0.0  # keeps the graph (and FSDP's reduce) whole

    cls = student_out["global_cls"]
    losses["koleo_loss"] = sum(koleo_loss(c.float()) for c in cls.chunk(n_g))

    total = (
        params.dino_weight * (losses["dino_global_crops_loss"] + losses["dino_local_crops_loss"])
        + params.ibot_weight * losses["ibot_loss"]
        + params.koleo_weight * losses["koleo_loss"]
    )
    losses["total_loss"] = total
    return losses


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
