"""The collapse indicators and the monitor that judges them: pure functions and `CollapseWatch`.

The thresholds were calibrated on real images (README "Collapse indicators"); the runs that show
it are in test_train_collapse.py. Here: what each indicator measures, one warning per window at
most, advice that leaves out what the run's config already does, and the end-of-run count.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinotrain.config import load_config
from dinotrain.train.monitor import (
    THRESHOLDS,
    CollapseWatch,
    collapse_advice,
    collapse_findings,
    collapse_stats,
    collapse_warning,
    effective_rank,
    head_collapse_stats,
    mean_pairwise_cosine,
    prototype_cosine,
    unit_row_sum,
)

REPO = Path(__file__).resolve().parents[1]
HEALTHY = {"head_bottleneck_cos": 0.6, "teacher_entropy": 5.4, "teacher_max_entropy": math.log(256),
           "teacher_batch_entropy": 5.5, "prototype_cos": -0.001, "cls_std": 0.8}
# the means of one window of a from-scratch LayerScale 1e-5 run on JSRT + COVID-CXR (steps 6-10)
COLLAPSED = dict(HEALTHY, head_bottleneck_cos=0.99995, teacher_entropy=5.54516)


def kinds(stats: dict) -> list[str]:
    return [k for k, _ in collapse_findings(stats)]


def test_collapse_indicators():
    torch.manual_seed(0)
    spread = torch.randn(64, 32)
    collapsed = torch.ones(64, 32) + 1e-6 * torch.randn(64, 32)
    # informative targets: each image peaked on its own prototype, all 10 in use over the batch
    peaked = torch.softmax(5 * F.one_hot(torch.arange(64) % 10, 10).float(), dim=-1)
    one_proto = F.one_hot(torch.zeros(64, dtype=torch.long), 10).float()
    good = collapse_stats(spread, peaked)
    bad = collapse_stats(collapsed, one_proto)
    assert 0.7 < good["cls_std"] < 1.3 and good["cls_effective_rank"] > 15
    assert bad["cls_std"] < 1e-3
    assert good["teacher_batch_entropy"] == pytest.approx(math.log(10), rel=1e-2)
    assert bad["teacher_batch_entropy"] < 1e-3
    assert kinds(good) == [] and collapse_warning(good, 10, 10) is None
    assert kinds(bad) == ["cls", "one_prototype"]
    line = collapse_warning(bad, 10, 10)
    assert line.startswith("collapse warning, step 10: CLS features") and "optim.lr" in line and "\n" not in line
    # uniform targets are the collapse the CLS indicators miss: they are a finding of their own
    assert kinds(collapse_stats(spread, torch.full((64, 10), 0.1))) == ["uniform"]
    line = torch.outer(torch.randn(50), torch.randn(8))
    assert effective_rank(line) == pytest.approx(1.0, abs=0.05)


def test_head_collapse_indicators_match_brute_force_and_shard():
    torch.manual_seed(0)
    x = torch.randn(33, 16) + 0.5
    z = F.normalize(x, dim=-1)
    brute = (z @ z.T)[~torch.eye(33, dtype=torch.bool)].mean()
    assert mean_pairwise_cosine(x) == pytest.approx(float(brute), abs=1e-6)
    # prototypes sharded by row (as FSDP2 does): the shards' sums add up to the whole one
    w = torch.randn(40, 16)
    whole = prototype_cosine(unit_row_sum(w), 40)
    assert prototype_cosine(unit_row_sum(w[:13]) + unit_row_sum(w[13:]), 40) == pytest.approx(whole, abs=1e-6)
    zw = F.normalize(w, dim=-1)
    assert whole == pytest.approx(float((zw @ zw.T)[~torch.eye(40, dtype=torch.bool)].mean()), abs=1e-6)

    spread = head_collapse_stats(torch.randn(64, 32), unit_row_sum(torch.randn(256, 32)), 256)
    assert abs(spread["head_bottleneck_cos"]) < 0.05 and abs(spread["prototype_cos"]) < 0.05
    same_point = torch.ones(64, 32) + 1e-3 * torch.randn(64, 32)
    one_direction = torch.ones(256, 32) + 1e-3 * torch.randn(256, 32)
    bad = head_collapse_stats(same_point, unit_row_sum(one_direction), 256)
    assert bad["head_bottleneck_cos"] > 0.999 and bad["prototype_cos"] > 0.999
    assert kinds(bad) == ["head", "prototypes"] and kinds(spread) == []


def test_thresholds_sit_between_the_healthy_and_the_collapsed_runs_on_real_images():
    # window means measured on real images (README "Collapse indicators"): the healthiest-looking
    # window of the collapsed run (LayerScale 1e-5) and the most collapse-like healthy one
    # (tiny_cpu.yaml on brain MRI), each indicator at its own extreme
    ln_k = math.log(256)
    least_collapsed = dict(HEALTHY, head_bottleneck_cos=0.998, teacher_entropy=ln_k - 0.0030)
    most_collapse_like = dict(HEALTHY, head_bottleneck_cos=0.990, teacher_entropy=ln_k - 0.0067)
    assert kinds(COLLAPSED) == kinds(least_collapsed) == ["head", "uniform"]
    assert kinds(most_collapse_like) == []
    # the uniform-target line is in nats from uniform, so it means the same for any K
    big_k = math.log(65536)
    assert kinds(dict(HEALTHY, teacher_max_entropy=big_k, teacher_entropy=big_k - 0.001)) == ["uniform"]
    assert kinds(dict(HEALTHY, teacher_max_entropy=big_k, teacher_entropy=0.999 * big_k)) == []
    assert THRESHOLDS.target_nats_below == 0.005


def test_advice_leaves_out_what_the_config_already_does():
    tiny = load_config(REPO / "configs/pretrain/tiny_cpu.yaml")  # LayerScale 0.1 already
    scratch = load_config(REPO / "configs/pretrain/tiny_cpu.yaml", ["model.layerscale_init=1e-5"])
    assert "model.layerscale_init (now 1e-05) to 0.1" in collapse_advice(["head", "uniform"], scratch)
    advice = collapse_advice(["head", "uniform"], tiny)
    assert "layerscale" not in advice and "optim.lr (now 0.001)" in advice
    assert "model.pretrained" in advice  # not set in tiny_cpu.yaml
    pretrained = load_config(REPO / "configs/pretrain/tiny_cpu.yaml", ["model.pretrained=/w.safetensors"])
    assert "model.pretrained" not in collapse_advice(["head"], pretrained)
    # Sinkhorn-Knopp is the default: only a softmax-centred run is told to switch
    assert "sinkhorn_knopp" not in collapse_advice(["one_prototype"], tiny)
    soft = load_config(REPO / "configs/pretrain/tiny_cpu.yaml", ["ssl.centering=softmax_center"])
    assert "ssl.centering=sinkhorn_knopp (now softmax_center)" in collapse_advice(["one_prototype"], soft)
    assert "koleo" not in collapse_advice(["cls"], tiny)
    assert "ssl.koleo_loss_weight > 0" in collapse_advice(
        ["cls"], load_config(REPO / "configs/pretrain/tiny_cpu.yaml", ["ssl.koleo_loss_weight=0"]))
    # the warning itself carries the run's advice
    assert "layerscale" not in collapse_warning(COLLAPSED, 6, 10, tiny)
    assert "model.layerscale_init (now 1e-05)" in collapse_warning(COLLAPSED, 6, 10, scratch)


def test_collapse_watch_judges_windows_not_steps():
    # one step of a small batch of similar images looks collapsed: no warning (seen in CI)
    watch = CollapseWatch(window=5, min_logs=3)
    said = []
    for step in range(5, 30):
        stats = dict(HEALTHY, head_bottleneck_cos=0.9999) if step == 9 else HEALTHY
        assert kinds(stats) == [] or step == 9
        said += watch.observe(stats, step)
    assert said == [] and watch.finish() == []
    assert watch.summary().startswith("collapse monitor: no warning (5 window(s)")


def test_collapse_watch_warns_at_most_once_per_window_and_counts():
    # a collapse persists: one warning line per alerting window at most, naming the steps it
    # covers, the same findings again only after `repeat_every` windows; NaN indicators (one
    # prototype) are left out of the means
    watch = CollapseWatch(window=5, min_logs=3, repeat_every=3)
    collapsed = dict(COLLAPSED, prototype_cos=float("nan"))
    said = [(step, w) for step in range(1, 41) for w in watch.observe(collapsed, step)]
    assert [s for s, _ in said] == [5, 20, 35]  # windows 1, 4, 7 of 8
    assert said[0][1].startswith("collapse warning, steps 1-5: the DINO head maps every image")
    assert "0.9999" in said[0][1] and "targets are uniform" in said[0][1] and "steps 31-35" in said[2][1]
    assert all(w.count("collapse warning") == 1 and "\n" not in w for _, w in said)
    assert watch.summary() == ("collapse monitor: 8 of 8 window(s) of up to 5 logged steps alerted (head 8, "
                               "uniform 8); 3 warning(s) printed; indicators per step in metrics.jsonl")
    # other findings are a new warning at once
    other = watch.observe(dict(HEALTHY, cls_std=0.01), 41)
    assert other == [] and len([w for s in range(42, 46) for w in watch.observe(dict(HEALTHY, cls_std=0.01), s)]) == 1


def test_collapse_watch_judges_the_last_partial_window():
    watch = CollapseWatch(window=5, min_logs=3)
    assert watch.observe(COLLAPSED, 1) == [] and watch.observe(COLLAPSED, 2) == []
    assert watch.finish() == []  # 2 < min_logs: not judged
    watch = CollapseWatch(window=5, min_logs=3)
    for step in (1, 2, 3):
        assert watch.observe(COLLAPSED, step) == []
    assert len(watch.finish()) == 1 and watch.windows == 1
    with pytest.raises(ValueError, match="min_logs"):
        CollapseWatch(window=2, min_logs=3)
