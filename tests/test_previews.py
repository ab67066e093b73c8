"""The pictures users read: `data preview`'s crops.png layout and captions, eval's chance lines and n."""

from __future__ import annotations

import numpy as np
import pytest

from dinotrain.data.augment import N_PARAMS, Col
from dinotrain.data.cli import GAP, LINE, _caption, _row_layout
from dinotrain.eval.metrics import chance_levels
from dinotrain.eval.report import chance_level, plot


def tiles(n: int, side: int) -> list:
    return [(np.zeros((side, side, 3), np.uint8), ("", "")) for _ in range(n)]


def test_local_crops_fill_the_height_of_the_global_ones():
    """RAD-DINO's 2 x 224 + 8 x 98 crops: the locals go in 2 rows of 4 beside the globals, not one long row."""
    pos, width, height = _row_layout(tiles(2, 224), tiles(8, 98))
    assert width == 2 * (224 + GAP) + 4 * (98 + GAP)  # not 8 columns of locals
    assert height == max(224 + 2 * LINE, 2 * (98 + 2 * LINE) + GAP)
    local_rows = sorted({y for _, y in pos[2:]})
    assert len(local_rows) == 2 and [x for x, y in pos[2:] if y == local_rows[0]] == sorted(
        x for x, y in pos[2:] if y == local_rows[0])  # local 1..4 left to right on the first row
    # every tile inside the row, none overlapping
    boxes = [(x, y, x + s, y + s + 2 * LINE) for (x, y), s in zip(pos, [224] * 2 + [98] * 8)]
    assert all(x1 <= width and y1 <= height for _, _, x1, y1 in boxes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_caption_names_kind_size_area_mask_and_augmentations():
    p = np.zeros(N_PARAMS, np.float32)
    p[[Col.Y0, Col.X0, Col.Y1, Col.X1]] = (0.1, 0.9, 0.6, 0.1)  # x0 > x1: a flipped crop of area 0.5 x 0.8
    p[Col.BLUR] = 1.0
    assert _caption(p, "global", 0, 224, 0.25) == ("global 1 224px", "area 0.40 mask 0.25 flip blur")
    p[[Col.BLUR, Col.X0, Col.X1]] = (0.0, 0.1, 0.3)
    p[Col.SOLAR] = 1.0
    assert _caption(p, "local", 2, 98, None) == ("local 3 98px", "area 0.10 sol")


def test_chance_levels_of_an_uninformative_predictor():
    Y = np.eye(2, dtype=np.float32)[[1, 1, 1, 0]]  # binary, 3 of 4 positive
    assert chance_levels(Y, multilabel=False) == {"auroc": 0.5, "auprc": 0.75, "accuracy": 0.75}
    Y3 = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2, 2]]
    c = chance_levels(Y3, multilabel=False)
    assert c["accuracy"] == 0.5 and c["auprc"] == pytest.approx(1 / 3)  # macro mean of 2/6, 1/6, 3/6
    multi = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], np.float32)
    assert chance_levels(multi, multilabel=True)["accuracy"] == pytest.approx((0.75 + 0.75) / 2)


def rec(kind, metric, value, **extra):
    return {"model": "m", "task": "t", "kind": kind, "metric": metric, "value": value, "ci_low": None,
            "ci_high": None, "n": 7, **extra}


def test_chance_line_per_metric_and_the_plot_is_written(tmp_path):
    records = [rec("linear", "auprc", 0.7, chance=0.3), rec("linear", "auroc", 0.8, chance=0.5),
               rec("ridge", "r2", 0.2), rec("alignment", "i2t_R@5", 0.4), rec("chance", "i2t_R@5", 0.25),
               rec("linear_head", "dice_lungs", 0.9)]
    assert chance_level("linear", "auprc", records) == 0.3
    assert chance_level("ridge", "r2", records) == 0.0
    assert chance_level("alignment", "i2t_R@5", records) == 0.25
    assert chance_level("linear_head", "dice_lungs", records) is None  # its baseline is the constant-mask bar
    path = plot(tmp_path, ["m"], records)
    assert path is not None and path.stat().st_size > 5000
