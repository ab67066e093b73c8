"""iBOT block masks, as DINOv2 draws them: rectangles of patches on half of the global crops.

Pure functions of a numpy Generator, so the loader can derive them from (seed, step) and a
resumed run draws the same masks.
"""

from __future__ import annotations

import math

import numpy as np


def block_mask(
    rng: np.random.Generator,
    grid: int,
    n_target: int,
    min_block: int = 4,
    max_block: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    tries: int = 10,
) -> np.ndarray:
    """A [grid, grid] bool mask with about `n_target` patches set, as a union of random blocks.

    Each block has an area drawn in [min_block, remaining budget] and an aspect ratio drawn
    log-uniformly in `aspect`; a block is only kept if it adds patches without overshooting the
    budget, and drawing stops when no block fits in `tries` attempts (so the count can end a
    little under the target, never over).
    """
    mask = np.zeros((grid, grid), dtype=bool)
    max_block = max_block if max_block is not None else max(min_block, grid * grid // 2)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    count = 0
    while count < n_target:
        budget = min(n_target - count, max_block)
        added = 0
        for _ in range(tries):
            area = rng.uniform(min_block, budget) if budget > min_block else float(budget)
            ratio = math.exp(rng.uniform(log_lo, log_hi))
            h = int(round(math.sqrt(area * ratio)))
            w = int(round(math.sqrt(area / ratio)))
            if not (0 < h < grid and 0 < w < grid):
                continue
            top = int(rng.integers(0, grid - h + 1))
            left = int(rng.integers(0, grid - w + 1))
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:
                block[...] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def batch_masks(
    rng: np.random.Generator,
    n_crops: int,
    grid: int,
    ratio_min: float,
    ratio_max: float,
    sample_probability: float,
) -> dict[str, np.ndarray | int]:
    """Masks for `n_crops` global crops: DINOv2's collate rule.

    `int(n_crops * sample_probability)` crops get a mask; their target ratios are spread evenly
    over [ratio_min, ratio_max] (one draw per equal sub-interval), the rest get none, and the
    assignment to crops is shuffled. `upperbound` is the sum of the sub-intervals' upper ends
    times N (the most patches the iBOT loss may see, used to size buffers).
    """
    n_patches = grid * grid
    n_masked_crops = int(n_crops * sample_probability)
    edges = np.linspace(ratio_min, ratio_max, n_masked_crops + 1)
    masks = np.zeros((n_crops, n_patches), dtype=bool)
    upperbound = 0
    for i in range(n_masked_crops):
        target = int(n_patches * rng.uniform(edges[i], edges[i + 1]))
        masks[i] = block_mask(rng, grid, target).reshape(-1)
        upperbound += int(n_patches * edges[i + 1])
    masks = masks[rng.permutation(n_crops)]
    flat = masks.reshape(-1)
    indices = np.flatnonzero(flat)
    per_crop = np.maximum(masks.sum(axis=1, keepdims=True), 1)
    # every masked patch weighs 1 / (masked patches of its crop): each crop counts once in iBOT
    weights = np.broadcast_to(1.0 / per_crop, masks.shape)[masks].astype(np.float32)
    return {
        "masks": masks,
        "mask_indices_list": indices.astype(np.int64),
        "masks_weight": weights,
        "n_masked_patches": int(indices.size),
        "upperbound": int(upperbound),
    }
