"""iBOT block masks: counts, block shapes, DINOv2's collate rule, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from dinotrain.data.masking import batch_masks, block_mask


@pytest.mark.parametrize("grid,target", [(16, 25), (16, 100), (37, 600), (4, 5)])
def test_block_mask_never_exceeds_target_and_gets_close(grid, target):
    counts = []
    for seed in range(20):
        m = block_mask(np.random.default_rng(seed), grid, target)
        assert m.shape == (grid, grid) and m.dtype == bool
        assert m.sum() <= target
        counts.append(m.sum())
    # blocks are drawn until the budget is nearly used: on average within 25% of the target
    assert np.mean(counts) >= 0.75 * target


def test_small_target_gives_compact_blocks_of_both_orientations():
    shapes = set()
    for seed in range(40):
        m = block_mask(np.random.default_rng(seed), 16, 6, min_block=4)
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        shapes.add((h, w))
        assert 3 <= m.sum() <= 6
    # aspect ratios in [0.3, 3.3] give tall, wide and square blocks
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes) and any(w == h for h, w in shapes)


def test_masks_are_few_large_blocks_not_scattered_patches():
    from scipy import ndimage

    counts = []
    for seed in range(30):
        labels, n = ndimage.label(block_mask(np.random.default_rng(seed), 16, 60, min_block=4))
        counts.append(n)
        assert np.bincount(labels.ravel())[1:].max() >= 4
    # 60 scattered patches on 16x16 would form ~40 regions; blocks form a handful
    assert np.mean(counts) <= 5


def test_block_mask_is_deterministic_per_seed():
    a = block_mask(np.random.default_rng(7), 16, 80)
    b = block_mask(np.random.default_rng(7), 16, 80)
    c = block_mask(np.random.default_rng(8), 16, 80)
    assert (a == b).all() and not (a == c).all()


def test_batch_masks_follow_dinov2_collate():
    n_crops, grid = 16, 16
    out = batch_masks(np.random.default_rng(0), n_crops, grid, 0.1, 0.5, 0.5)
    masks = out["masks"]
    assert masks.shape == (n_crops, grid * grid)
    per_crop = masks.sum(1)
    # half of the crops are masked, the others not at all
    assert (per_crop > 0).sum() == 8 and (per_crop == 0).sum() == 8
    ratios = np.sort(per_crop[per_crop > 0]) / grid**2
    assert ratios.min() >= 0.05 and ratios.max() <= 0.5
    # targets are spread over [0.1, 0.5]: the largest mask is well above the smallest
    assert ratios[-1] - ratios[0] > 0.2
    assert out["n_masked_patches"] == masks.sum() == out["mask_indices_list"].size
    assert (np.flatnonzero(masks.reshape(-1)) == out["mask_indices_list"]).all()
    # each masked crop's weights sum to 1: every crop counts once in the iBOT loss
    w = out["masks_weight"]
    assert w.shape == (masks.sum(),)
    crop_of = out["mask_indices_list"] // grid**2
    for c in np.unique(crop_of):
        assert abs(w[crop_of == c].sum() - 1.0) < 1e-5
    edges = np.linspace(0.1, 0.5, 9)
    assert out["upperbound"] == sum(int(grid * grid * e) for e in edges[1:])
    assert out["upperbound"] >= out["n_masked_patches"]


def test_batch_masks_probability_zero_and_one():
    none = batch_masks(np.random.default_rng(0), 6, 8, 0.1, 0.5, 0.0)
    assert none["masks"].sum() == 0 and none["n_masked_patches"] == 0 and none["upperbound"] == 0
    every = batch_masks(np.random.default_rng(0), 6, 8, 0.1, 0.5, 1.0)
    assert (every["masks"].sum(1) > 0).all()
