"""iBOT's masked-patch cross-entropy (DINOv2's `iBOTPatchLoss.forward_masked`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibot_loss(student_logits_masked: torch.Tensor, teacher_probs_masked: torch.Tensor, masks: torch.Tensor,
              student_temp: float = 0.1, masks_weight: torch.Tensor | None = None,
              n_masked: int | None = None) -> torch.Tensor:
    """Cross-entropy of each masked token, weighted by 1 / (masked tokens of its image), summed,
    divided by the number of images (masked or not) in `masks`.

    student_logits_masked, teacher_probs_masked: [M, K], the masked tokens in `masks[masks]`
    order (row-major over images). masks: [n_images, n_patches] bool. masks_weight: [M]
    precomputed weights (the data loader's `mask_weights`), else derived from `masks`.
    n_masked: use only the first n rows (when the token tensors are padded to a fixed size).
    """
    masks = masks.reshape(masks.shape[0], -1).bool()
    lsm = F.log_softmax(student_logits_masked.float() / student_temp, dim=-1)
    loss = (teacher_probs_masked.float() * lsm).sum(dim=-1)
    if masks_weight is None:
        per_image = 1.0 / masks.sum(dim=-1).clamp(min=1.0)
        masks_weight = per_image.unsqueeze(-1).expand_as(masks)[masks]
    if n_masked is not None:
        loss = loss[:n_masked]
        masks_weight = masks_weight[:n_masked]
    if loss.shape[0] != masks_weight.shape[0]:
        raise ValueError(f"ibot_loss: {loss.shape[0]} masked token logits but {masks_weight.shape[0]} mask "
                         "weights: pass the tokens selected by `masks` (or n_masked for padded tensors)")
    return -(loss * masks_weight.to(loss.dtype)).sum() / masks.shape[0]
