"""DINOv2's objectives as pure functions: tensors in, tensors out, no module state."""

from dinotrain.losses.centering import (
                                       all_reduce_sum,
                                       sinkhorn_knopp,
                                       softmax_center,
                                       update_center,
                                       update_center_mean_of_ranks,
)
from dinotrain.losses.dino import dino_loss
from dinotrain.losses.ibot import ibot_loss
from dinotrain.losses.koleo import koleo_loss

__all__ = [
    "all_reduce_sum",
    "dino_loss",
    "ibot_loss",
    "koleo_loss",
    "sinkhorn_knopp",
    "softmax_center",
    "update_center",
    "update_center_mean_of_ranks",
]
