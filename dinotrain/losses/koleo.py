"""KoLeo regulariser (DINOv2's `KoLeoLoss`): spread the batch's features uniformly."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of -log(distance to the nearest neighbour + eps), in fp32.

    x: [B, D]. Rows are L2-normalised; the neighbour is the row of highest dot product other
    than itself; the distance is nn.PairwiseDistance(p=2, eps=eps)'s (eps added to the
    difference, so identical rows give a finite loss and gradient). With B < 2 there is no
    neighbour: DINOv2 would compare a row with itself (a large meaningless constant); here the
    loss is 0 (still attached to the graph).
    """
    x = x.float()
    n = x.shape[0]
    if n < 2:
        return x.sum() * 0.0
    x = F.normalize(x, p=2, dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)  # below any cosine: never pick yourself
        nn_idx = dots.argmax(dim=1)
    dist = torch.linalg.vector_norm(x - x[nn_idx] + eps, dim=-1)
    return -torch.log(dist + eps).mean()
