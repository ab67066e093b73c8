"""DINO's CLS-token cross-entropy (DINOv2's `DINOLoss.forward`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


def dino_loss(student_logits_list: torch.Tensor | Sequence[torch.Tensor],
              teacher_probs_list: torch.Tensor | Sequence[torch.Tensor],
              student_temp: float = 0.1) -> torch.Tensor:
    """Sum over every (student, teacher) pair of the batch-mean of -sum_k t_k log softmax(s / T)_k.

    Each element is [B, K]. Which crops are paired (and skipping a crop with itself) is the
    training step's decision: DINOv2 calls this with the local crops against both teacher
    globals, and with the student globals against the swapped teacher globals.
    """
    students = _as_list(student_logits_list)
    teachers = _as_list(teacher_probs_list)
    total = students[0].new_zeros(())
    for s in students:
        lsm = F.log_softmax(s.float() / student_temp, dim=-1)
        for t in teachers:
            total = total - (t.float() * lsm).sum(dim=-1).mean()
    return total
