"""The demo's report: metrics.jsonl parsing, plots written as real PNGs, the table and the paragraph."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from launch.demo.report import (
    ProbeRow,
    explain,
    format_table,
    loss_series,
    plot_images,
    plot_losses,
    plot_probes,
    read_metrics,
)


def _write_metrics(path, n=20, truncated_tail=True):
    with path.open("w") as f:
        for step in range(0, n * 5, 5):
            row = {"step": step, "loss": 10.0 / (1 + step), "dino_loss": 6.0 / (1 + step),
                   "ibot_loss": 4.0 / (1 + step), "lr": 1e-3, "nonfinite": False}
            if step == 15:
                row["koleo_loss"] = float("nan")  # a skipped value must not break the curve
            f.write(json.dumps(row) + "\n")
        if truncated_tail:
            f.write('{"step": 100, "lo')  # the run is still writing this line


def test_read_metrics_tolerates_a_partial_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path)
    rows = read_metrics(path)
    assert len(rows) == 20 and rows[-1]["step"] == 95


def test_read_metrics_rejects_corruption_in_the_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 1}\nnot json\n{"step": 1, "loss": 0.5}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path)


def test_loss_series_picks_finite_loss_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path)
    series = loss_series(read_metrics(path))
    assert set(series) == {"dino_loss", "ibot_loss", "loss"}  # koleo only had a NaN; lr is no loss
    steps, values = series["loss"]
    np.testing.assert_array_equal(steps, np.arange(0, 100, 5))
    assert values[0] == 10.0 and np.all(np.diff(values) < 0)


def test_plots_are_pngs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path, truncated_tail=False)
    loss_png = plot_losses(read_metrics(path), tmp_path / "plots" / "loss.png")
    rows = [ProbeRow("xr_age", "r2", 0.4, 0.1, (0.3, 0.5), (0.0, 0.2)),
            ProbeRow("xr_sex", "auroc", 0.9, 0.95, None, None)]
    probe_png = plot_probes(rows, tmp_path / "probes.png")
    rng = np.random.default_rng(0)
    imgs = [(f"img{i}", rng.integers(0, 4096, (32, 40)).astype(np.uint16)) for i in range(5)]
    imgs.append(("chw", rng.random((3, 16, 16)).astype(np.float32)))
    grid_png = plot_images(imgs, tmp_path / "samples.png", cols=3)
    for p in (loss_png, probe_png, grid_png):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
    with pytest.raises(ValueError, match="no numeric"):
        plot_losses([{"step": 0, "lr": 1.0}], tmp_path / "x.png")


def test_table_and_paragraph_follow_the_numbers():
    rows = [
        ProbeRow("xr_age", "r2", 0.40, 0.10, (0.30, 0.50), (0.00, 0.20)),
        ProbeRow("us_lesion", "auroc", 0.70, 0.72, (0.6, 0.8), (0.62, 0.82)),
        ProbeRow("ct_age", "mae", 8.0, 12.0, higher_is_better=False),
    ]
    table = format_table(rows).splitlines()
    assert table[0].split()[0] == "task" and len(table) == 5
    assert "+0.300" in table[2] and "-0.020" in table[3] and "+4.000" in table[4]
    text = explain(rows, steps=50, first_loss=11.0, last_loss=9.5)
    assert "fell from 11.000 to 9.500" in text
    assert "on 2 of 3 probe tasks (1 with non-overlapping" in text
    assert "synthetic" in text
    assert "did not fall" in explain(rows, 10, 9.0, 9.5)
    assert "the teacher of step 8 (the last checkpoint)" in explain(rows, 10, 9.0, 8.5, evaluated_step=8)
    assert "last checkpoint" not in explain(rows, 10, 9.0, 8.5, evaluated_step=10)
