"""Schedules: warm-up + cosine lr (sqrt batch scaling), cosine wd and momentum, teacher temperature."""

from __future__ import annotations

import math

import pytest

from dinotrain.config import load_config
from dinotrain.train.schedules import Schedules, cosine, linear_warmup_then_constant, scaled_lr, warmup_cosine


def test_cosine_endpoints_and_midpoint():
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine(150, 100, 0.04, 0.4) == pytest.approx(0.4)  # clamped after the end
    # monotone between the ends
    vals = [cosine(s, 100, 0.992, 1.0) for s in range(101)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))


def test_warmup_cosine_shape():
    peak, end = 1e-3, 1e-6
    assert warmup_cosine(0, 100, peak, end, warmup=10) == 0.0
    # DINOv2's np.linspace(0, peak, 10): the peak is reached on the last warm-up step
    assert warmup_cosine(5, 100, peak, end, warmup=10) == pytest.approx(peak * 5 / 9)
    assert warmup_cosine(9, 100, peak, end, warmup=10) == pytest.approx(peak)
    assert warmup_cosine(10, 100, peak, end, warmup=10) == pytest.approx(peak)
    assert warmup_cosine(55, 100, peak, end, warmup=10) == pytest.approx(end + (peak - end) / 2)
    assert warmup_cosine(100, 100, peak, end, warmup=10) == pytest.approx(end)
    # a warm-up longer than the run is cut to the run: still increasing, no division by zero
    vals = [warmup_cosine(s, 5, peak, end, warmup=100) for s in range(5)]
    assert vals == sorted(vals) and vals[-1] == pytest.approx(peak)


def test_teacher_temperature_warmup():
    assert linear_warmup_then_constant(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup_then_constant(15, 30, 0.04, 0.07) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert linear_warmup_then_constant(29, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup_then_constant(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup_then_constant(1000, 30, 0.04, 0.07) == pytest.approx(0.07)


def test_lr_scaling():
    assert scaled_lr(0.004, 1024, "sqrt_wrt_1024") == pytest.approx(0.004)
    assert scaled_lr(0.004, 256, "sqrt_wrt_1024") == pytest.approx(0.002)
    assert scaled_lr(0.004, 256, "none") == pytest.approx(0.004)
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(0.004, 256, "linear")


def test_schedules_from_config_follow_the_recipe():
    cfg = load_config(None, ["train.max_steps=100", "optim.warmup_steps=10", "optim.freeze_last_layer_steps=5",
                             "ssl.warmup_teacher_temp_steps=20", "optim.lr=0.004"])
    s = Schedules.from_config(cfg.optim, cfg.ssl, cfg.train, global_batch=64)
    peak = 0.004 * math.sqrt(64 / 1024)
    assert s.peak_lr == pytest.approx(peak)
    v0, v4, v5, v10, v_end = s.at(0), s.at(4), s.at(5), s.at(10), s.at(100)
    assert v0.lr == 0.0 and v0.last_layer_lr == 0.0
    assert v4.last_layer_lr == 0.0 and v4.lr > 0  # last layer frozen for the first 5 steps
    assert v5.last_layer_lr == v5.lr > 0
    assert v10.lr == pytest.approx(peak)
    assert v_end.lr == pytest.approx(cfg.optim.min_lr)
    assert v0.wd == pytest.approx(0.04) and v_end.wd == pytest.approx(0.4)
    assert v0.momentum == pytest.approx(0.992) and v_end.momentum == pytest.approx(1.0)
    assert v0.teacher_temp == pytest.approx(0.04) and s.at(20).teacher_temp == pytest.approx(0.07)
    assert set(v0.as_dict()) == {"lr", "last_layer_lr", "wd", "momentum", "teacher_temp"}
