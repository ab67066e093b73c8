"""Our recipe against independent re-statements of what facebookresearch/dinov2's code computes.

Each reference below is written from dinov2's documented behaviour, not from our functions:
schedules as `CosineScheduler` arrays (np.linspace warm-up, cosine over the remaining steps,
the last layer's lr zeroed while frozen), parameter groups as `get_params_groups_with_decay`
(decay on everything but biases, norms and gammas), the iBOT softmax centre as
`iBOTPatchLoss.reduce_center_update` (mean over ranks of each rank's mean), and last-layer
freezing as lr 0 with the gradient kept.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinotrain.config import ModelConfig, SSLConfig, load_config
from dinotrain.losses import update_center, update_center_mean_of_ranks
from dinotrain.train.optim import apply_step_values, build_optimizer, param_multipliers
from dinotrain.train.schedules import Schedules


# ----------------------------------------------------------------------------- schedules
def _cosine_scheduler(base, final, total, warmup=0, start_warmup=0.0) -> np.ndarray:
    """dinov2.utils.utils.CosineScheduler's array, re-stated."""
    ramp = np.linspace(start_warmup, base, warmup)
    rest = np.arange(total - warmup)
    tail = final + 0.5 * (base - final) * (1 + np.cos(np.pi * rest / len(rest)))
    return np.concatenate((ramp, tail))


def _at(schedule: np.ndarray, it: int, final: float) -> float:
    return float(schedule[it]) if it < len(schedule) else final


@pytest.mark.parametrize("warmup,teacher_warmup,freeze", [(10, 30, 5), (1, 1, 0), (0, 0, 1), (25, 100, 100)])
def test_schedules_equal_dinov2_cosine_scheduler(warmup, teacher_warmup, freeze):
    total, batch = 100, 256
    cfg = load_config(None, [f"train.max_steps={total}", f"optim.warmup_steps={warmup}",
                             f"ssl.warmup_teacher_temp_steps={teacher_warmup}",
                             f"optim.freeze_last_layer_steps={freeze}", "optim.lr=0.004", "optim.min_lr=1e-6"])
    s = Schedules.from_config(cfg.optim, cfg.ssl, cfg.train, global_batch=batch)
    peak = 0.004 * math.sqrt(batch / 1024)  # dinov2's apply_scaling_rules_to_cfg
    lr = _cosine_scheduler(peak, 1e-6, total, warmup)
    last = lr.copy()
    last[:freeze] = 0
    wd = _cosine_scheduler(0.04, 0.4, total)
    mom = _cosine_scheduler(0.992, 1.0, total)
    temp = _cosine_scheduler(0.07, 0.07, teacher_warmup, teacher_warmup, 0.04)
    for it in range(total + 3):
        v = s.at(it)
        assert v.lr == pytest.approx(_at(lr, it, 1e-6), abs=1e-12), it
        assert v.last_layer_lr == pytest.approx(_at(last, it, 1e-6), abs=1e-12), it
        assert v.wd == pytest.approx(_at(wd, it, 0.4), abs=1e-12), it
        assert v.momentum == pytest.approx(_at(mom, it, 1.0), abs=1e-12), it
        assert v.teacher_temp == pytest.approx(_at(temp, it, 0.07), abs=1e-12), it


# ----------------------------------------------------------------------------- parameter groups
def _dinov2_multipliers(part: str, name: str, n_blocks: int, lr_decay: float, patch_mult: float) -> tuple:
    """dinov2.utils.param_groups for one parameter of a student submodule (`part` = backbone,
    dino_head, ibot_head; `name` without the part prefix)."""
    lr = 1.0  # a head has no blocks: dinov2's decay exponent is 0 there
    if part == "backbone":
        layer = n_blocks + 1
        if any(k in name for k in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")):
            layer = 0
        elif "blocks." in name:
            layer = int(name.split(".")[1]) + 1
        lr = lr_decay ** (n_blocks + 1 - layer)
    wd = 0.0 if (name.endswith(".bias") or "norm" in name or "gamma" in name) else 1.0
    if "patch_embed" in name:
        lr *= patch_mult
    return lr, wd, "last_layer" in name


@pytest.mark.parametrize("registers", [0, 4])
def test_param_groups_equal_dinov2(registers):
    from dinotrain.models import build_backbone, build_head

    backbone = build_backbone(ModelConfig(arch="vit_tiny", img_size=56, num_register_tokens=registers), device="cpu")
    head = build_head(backbone.embed_dim, SSLConfig(head_n_prototypes=64, head_hidden_dim=32, head_bottleneck_dim=16),
                      device="cpu")
    n_blocks = backbone.n_blocks
    checked = 0
    for part, module in (("backbone", backbone), ("dino_head", head)):
        for name, p in module.named_parameters():
            got = param_multipliers(f"{part}.{name}", p, n_blocks, 0.9, 0.2)
            want = _dinov2_multipliers(part, name, n_blocks, 0.9, 0.2)
            assert (got["lr_mult"], got["wd_mult"], got["is_last_layer"]) == (pytest.approx(want[0]), *want[1:]), name
            checked += 1
    assert checked > 50
    # the option: tokens and position embeddings exempt from decay, nothing else changes
    for name, p in backbone.named_parameters():
        a = param_multipliers(f"backbone.{name}", p, n_blocks, 0.9, 0.2)
        b = param_multipliers(f"backbone.{name}", p, n_blocks, 0.9, 0.2, decay_tokens=False)
        token = name in ("cls_token", "pos_embed", "mask_token", "register_tokens")
        assert b["wd_mult"] == (0.0 if token else a["wd_mult"]) and b["lr_mult"] == a["lr_mult"], name


# ----------------------------------------------------------------------------- last-layer freezing
def test_frozen_last_layer_keeps_its_gradient_in_the_norm_and_its_adam_moments():
    """dinov2 freezes the last layer by lr 0 only: the weights stay, the moments accumulate, the
    clipping norm includes its gradient."""
    from dinotrain.models import build_backbone, build_head
    from dinotrain.train.meta_arch import SSLNetwork
    from dinotrain.train.schedules import StepValues
    from dinotrain.train.trainer import clip_grad_norms

    torch.manual_seed(0)
    cfg = load_config(None, ["model.arch=vit_tiny", "model.img_size=56", "ssl.head_n_prototypes=64",
                             "ssl.head_hidden_dim=32", "ssl.head_bottleneck_dim=16"])
    backbone = build_backbone(cfg.model, device="cpu")
    net = SSLNetwork(backbone, build_head(backbone.embed_dim, cfg.ssl, device="cpu"))
    opt = build_optimizer(net, cfg.optim, backbone.n_blocks)
    apply_step_values(opt, StepValues(lr=1e-3, last_layer_lr=0.0, wd=0.04, momentum=0.99, teacher_temp=0.04))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net(torch.randn(2, 3, 56, 56))["global_cls_logits"].logsumexp(-1).mean().backward()
    head_grads = [p.grad for p in net.dino_head.parameters() if p.grad is not None]
    want_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in head_grads])))
    assert any("last_layer" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters())
    norms = clip_grad_norms(net, clip=1e9)
    assert norms["grad_norm_dino_head"] == pytest.approx(want_norm, rel=1e-5)
    opt.step()
    for n, p in net.named_parameters():
        if "last_layer" in n:
            assert torch.equal(p.detach(), before[n]), n  # lr 0 (decoupled decay is lr * wd: 0 too)
            assert float(opt.state[p]["exp_avg_sq"].sum()) > 0, n  # the moments accumulated
    assert not torch.equal(net.dino_head.mlp[0].weight.detach(), before["dino_head.mlp.0.weight"])  # the rest trains


# ----------------------------------------------------------------------------- centring
def _dinov2_ibot_center(center, per_rank_logits, momentum):
    """iBOTPatchLoss.reduce_center_update + apply_center_update with its [1, M, K] input: each
    rank's mean over its masked patches, summed over ranks, divided by the world size."""
    means = [x.mean(0, keepdim=True) for x in per_rank_logits]
    return center * momentum + sum(means) / len(means) * (1 - momentum)


def test_ibot_center_on_one_process():
    torch.manual_seed(0)
    c, x = torch.randn(1, 8), torch.randn(40, 8)
    want = _dinov2_ibot_center(c, [x], 0.9)
    torch.testing.assert_close(update_center_mean_of_ranks(c, x, 0.9, distributed=False), want)
    # a batch without masked patches keeps the centre (dinov2 would give NaN)
    same = update_center_mean_of_ranks(c, x[:0], 0.9, distributed=False)
    assert torch.equal(same, c)
    # the DINO centre: the batch mean
    torch.testing.assert_close(update_center(c, x, 0.9, distributed=False), c * 0.9 + x.mean(0, keepdim=True) * 0.1)


def _center_worker(rank: int, world: int, port: int, counts: list[int], center: torch.Tensor, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(100 + rank)
        logits = torch.randn(counts[rank], 16, generator=g) * (1 + 3 * rank)  # ranks differ in scale too
        c = update_center_mean_of_ranks(center, logits, 0.9)
        q.put((rank, logits.numpy(), c.numpy()))  # numpy: see test_losses on tensor queues
    finally:
        dist.destroy_process_group()


def _two_ranks(counts: list[int], center: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    from tests.services import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_center_worker, args=(r, 2, port, counts, center, q)) for r in range(2)]
    for p in procs:
        p.start()
    out = {r: (torch.from_numpy(x), torch.from_numpy(c)) for r, x, c in (q.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


@pytest.mark.parametrize("counts", [[40, 200], [0, 200], [0, 0]])
def test_ibot_center_on_two_gloo_ranks_is_dinov2s_on_every_rank(counts):
    center = torch.randn(1, 16, generator=torch.Generator().manual_seed(7))
    res = _two_ranks(counts, center)
    c0, c1 = res[0][1], res[1][1]
    assert torch.isfinite(c0).all() and torch.equal(c0, c1)  # one centre, never NaN
    present = [res[r][0] for r in range(2) if counts[r] > 0]
    if present:
        want = _dinov2_ibot_center(center, present, 0.9)
        torch.testing.assert_close(c0, want, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(c0, center)
    if counts == [40, 200]:
        # not the pooled mean over all 240 rows: the 40-row rank weighs as much as the other
        pooled = center * 0.9 + torch.cat([res[0][0], res[1][0]]).mean(0, keepdim=True) * 0.1
        assert not torch.allclose(c0, pooled, atol=1e-3)
