"""Trainer parts in one process: parameter groups, the pure losses, EMA, checkpoints, init from HF."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dinotrain.config import SSLConfig, load_config
from dinotrain.train.checkpoint import from_jsonable, latest_checkpoint, list_checkpoints, to_jsonable
from dinotrain.train.meta_arch import TeacherTargets, compute_losses, ema_update
from dinotrain.train.optim import apply_step_values, build_optimizer, param_multipliers
from dinotrain.train.schedules import StepValues

pytestmark = [
    # known and handled (see dinotrain.train.loop._quiet_known_warnings)
    pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor"),
    pytest.mark.filterwarnings("ignore:DTensor random operators may not have complete support on cpu"),
]

TINY = [
    "model.arch=vit_tiny", "model.img_size=56", "data.global_crops_size=56", "data.local_crops_size=28",
    "data.batch_size_per_gpu=4", "data.local_crops_number=2", "ssl.head_n_prototypes=256",
    "ssl.head_hidden_dim=128", "ssl.head_bottleneck_dim=64", "model.drop_path_rate=0.0",
]


def _nets(cfg):
    from dinotrain.train.networks import build_networks

    return build_networks(cfg.model, cfg.ssl, cfg.parallel, cfg.train.seed, torch.device("cpu"), 1)


@pytest.fixture()
def group():
    """A one-process gloo group (what `run` creates for a local run), destroyed afterwards."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- parameter groups
def test_param_multipliers_follow_dinov2():
    def m(name, shape=(4, 4)):
        return param_multipliers(name, torch.empty(shape), num_layers=12, layerwise_decay=0.9, patch_embed_lr_mult=0.2)

    pe = m("backbone.patch_embed.proj.weight", (8, 3, 14, 14))
    assert pe["lr_mult"] == pytest.approx(0.9**13 * 0.2) and pe["wd_mult"] == 1.0
    assert m("backbone.blocks.0.attn.qkv.weight")["lr_mult"] == pytest.approx(0.9**12)
    assert m("backbone.blocks.11.mlp.fc1.weight")["lr_mult"] == pytest.approx(0.9)
    assert m("backbone.blocks.11.mlp.fc1.weight")["wd_mult"] == 1.0
    assert m("dino_head.mlp.0.weight")["lr_mult"] == pytest.approx(1.0)
    for name, shape in [("backbone.blocks.3.attn.qkv.bias", (4,)), ("backbone.blocks.3.norm1.weight", (4,)),
                        ("backbone.blocks.3.ls1.gamma", (4,)), ("backbone.norm.weight", (4,))]:
        assert m(name, shape)["wd_mult"] == 0.0, name
    tokens = [("backbone.cls_token", (1, 1, 4)), ("backbone.pos_embed", (1, 5, 4)), ("backbone.mask_token", (1, 4)),
              ("backbone.register_tokens", (1, 4, 4))]
    for name, shape in tokens:  # DINOv2 decays them; decay_tokens=False is the opt-out
        assert m(name, shape)["wd_mult"] == 1.0, name
        assert param_multipliers(name, torch.empty(shape), 12, 0.9, 0.2, decay_tokens=False)["wd_mult"] == 0.0
    assert m("backbone.cls_token", (1, 1, 4))["lr_mult"] == pytest.approx(0.9**13)
    ll = m("dino_head.last_layer.weight_v", (256, 64))
    assert ll["is_last_layer"] and ll["wd_mult"] == 1.0


def test_optimizer_groups_and_step_values(group):

    cfg = load_config(None, TINY)
    student, _ = _nets(cfg)
    opt = build_optimizer(student, cfg.optim, num_layers=12)
    n_params = sum(1 for p in student.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params
    apply_step_values(opt, StepValues(lr=1e-3, last_layer_lr=0.0, wd=0.04, momentum=0.99, teacher_temp=0.04))
    for g in opt.param_groups:
        want_lr = 0.0 if g["is_last_layer"] else 1e-3 * g["lr_mult"]
        assert g["lr"] == pytest.approx(want_lr)
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_mult"])
    assert any(g["is_last_layer"] for g in opt.param_groups)


# ----------------------------------------------------------------------------- losses
def _ce(s, t, temp):
    """Explicit batch-mean cross-entropy, one row at a time."""
    total = 0.0
    for i in range(s.shape[0]):
        logp = [x - math.log(sum(math.exp(y / temp) for y in s[i].tolist())) for x in (s[i] / temp).tolist()]
        total += -sum(tk * lk for tk, lk in zip(t[i].tolist(), logp))
    return total / s.shape[0]


def test_compute_losses_matches_an_explicit_derivation():
    torch.manual_seed(0)
    B, K, n_l, N = 3, 7, 2, 4
    student_temp, teacher_temp = 0.1, 0.05
    s_out = {
        "global_cls_logits": torch.randn(2 * B, K),
        "local_cls_logits": torch.randn(n_l * B, K),
        "global_cls": torch.randn(2 * B, 16),
    }
    masks = torch.zeros(2 * B, N, dtype=torch.bool)
    masks[0, [0, 2]] = True
    masks[4, [1]] = True
    M = int(masks.sum())
    s_out["masked_patch_logits"] = torch.randn(M, K)
    t_cls, t_patch = torch.randn(2 * B, K), torch.randn(M, K)
    teacher = TeacherTargets(cls_logits=t_cls, masked_patch_logits=t_patch,
                             dino_center=torch.zeros(1, K), ibot_center=torch.zeros(1, K))
    ssl = SSLConfig(student_temp=student_temp, centering="softmax_center",
                    dino_loss_weight=1.0, ibot_loss_weight=1.0, koleo_loss_weight=0.1)
    out = compute_losses(s_out, teacher, {"masks": masks}, ssl, 2, teacher_temp)

    tp = F.softmax(t_cls / teacher_temp, dim=-1)
    t0, t1 = tp[:B], tp[B:]
    sg0, sg1 = s_out["global_cls_logits"][:B], s_out["global_cls_logits"][B:]
    denom = 2 + n_l * 2  # 2 global pairs, 4 local x global pairs
    want_global = (_ce(sg0, t1, student_temp) + _ce(sg1, t0, student_temp)) / denom
    locs = s_out["local_cls_logits"].chunk(n_l)
    want_local = sum(_ce(lc, t, student_temp) for lc in locs for t in (t0, t1)) / denom
    assert float(out.dino_global_crops_loss) == pytest.approx(want_global, rel=1e-5)
    assert float(out.dino_local_crops_loss) == pytest.approx(want_local, rel=1e-5)

    # iBOT: each image's masked patches weigh 1/its count, divided by all 2B images
    tpp = F.softmax(t_patch / teacher_temp, dim=-1)
    rows = masks.nonzero().tolist()
    want_ibot = 0.0
    for r, (img, _) in enumerate(rows):
        w = 1.0 / int(masks[img].sum())
        want_ibot += w * _ce(s_out["masked_patch_logits"][r:r + 1], tpp[r:r + 1], student_temp)
    want_ibot /= 2 * B
    assert float(out.ibot_loss) == pytest.approx(want_ibot, rel=1e-5)

    # KoLeo on each global crop's CLS separately, summed
    def koleo(x):
        x = F.normalize(x, dim=-1)
        vals = []
        for i in range(x.shape[0]):
            d = [float(torch.linalg.vector_norm(x[i] - x[j] + 1e-8)) for j in range(x.shape[0]) if j != i]
            sims = [float(x[i] @ x[j]) for j in range(x.shape[0]) if j != i]
            vals.append(-math.log(d[int(np.argmax(sims))] + 1e-8))
        return sum(vals) / len(vals)

    want_koleo = koleo(s_out["global_cls"][:B]) + koleo(s_out["global_cls"][B:])
    assert float(out.koleo_loss) == pytest.approx(want_koleo, rel=1e-4)
    want_total = want_global + want_local + want_ibot + 0.1 * want_koleo
    assert float(out.total_loss) == pytest.approx(want_total, rel=1e-4)


def test_sinkhorn_targets_and_uniform_logits_give_log_k():
    B, K = 4, 16
    s_out = {"global_cls_logits": torch.zeros(2 * B, K), "local_cls_logits": torch.zeros(0, K),
             "global_cls": torch.randn(2 * B, 8), "masked_patch_logits": torch.zeros(0, K)}
    teacher = TeacherTargets(cls_logits=torch.randn(2 * B, K), masked_patch_logits=torch.zeros(0, K),
                             n_masked_total=torch.tensor(0.0))
    out = compute_losses(s_out, teacher, {"masks": torch.zeros(2 * B, 4, dtype=torch.bool)}, SSLConfig(), 2, 0.07)
    # uniform student: cross-entropy with any distribution is log K; 2 pairs / (2 + 1) terms
    assert float(out.dino_global_crops_loss) == pytest.approx(2 * math.log(K) / 3, rel=1e-5)
    assert float(out.dino_local_crops_loss) == 0.0 and float(out.ibot_loss) == 0.0
    assert all(torch.isfinite(v) for v in out.stacked())


def test_ema_update_is_the_momentum_average():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ta = [p.detach().clone() for p in a.parameters()]
    ema_update(a, b, 0.9)
    for t0, p, s in zip(ta, a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), 0.9 * t0 + 0.1 * s.detach())


# ----------------------------------------------------------------------------- monitoring (more: test_train_monitor.py)
def test_head_reports_the_bottleneck_its_logits_come_from():
    from dinotrain.models.heads import DINOHead

    torch.manual_seed(0)
    head = DINOHead(24, out_dim=50, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(5, 24)
    logits, z = head(x, return_bottleneck=True)
    assert torch.equal(logits, head(x))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(logits, head.last_layer(z))


# ----------------------------------------------------------------------------- checkpoints
def test_json_state_roundtrip():
    state = {"rng": torch.get_rng_state(), "f": torch.tensor([[1.5, -2.0]]), "a": np.arange(5, dtype=np.int64),
             "n": np.int64(3), "nested": [{"x": 1, "b": b"\x00\x01"}], "empty": torch.zeros(0)}
    back = from_jsonable(json.loads(json.dumps(to_jsonable(state))))
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    assert torch.equal(back["f"], state["f"]) and back["f"].dtype == torch.float32
    assert np.array_equal(back["a"], state["a"]) and back["n"] == 3
    assert back["nested"] == [{"x": 1, "b": b"\x00\x01"}] and back["empty"].numel() == 0


class _Position:
    """A loader's saved position, as the training loader reports it."""

    def __init__(self) -> None:
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


@pytest.mark.slow
def test_checkpoint_roundtrip_keep_last_and_atomicity(group, tmp_path):

    cfg = load_config(None, TINY)
    student, teacher = _nets(cfg)
    opt = build_optimizer(student, cfg.optim, 12)
    apply_step_values(opt, StepValues(lr=1e-3, last_layer_lr=1e-3, wd=0.04, momentum=0.9, teacher_temp=0.04))
    x = torch.randn(2, 3, 56, 56)
    student(x)["global_cls_logits"].square().mean().backward()
    opt.step()
    ema_update(teacher, student, 0.5)
    from dinotrain.train.ckpt_manager import CheckpointManager
    from dinotrain.train.distributed import DistEnv
    from dinotrain.train.state import TrainState

    env = DistEnv(0, 1, 0, torch.device("cpu"), False)
    state = TrainState.create(256, torch.device("cpu"), False, loader=_Position())
    state.dino_center = torch.randn(1, 256)
    manager = CheckpointManager(tmp_path, env, every=1, keep=2, max_steps=100)
    manager.register(student, teacher, opt, state)
    for step in (1, 2, 3):
        state.step, state.loader.pos = step, step
        manager.save(step)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    # a half-written checkpoint (no meta.json) is never picked
    (tmp_path / "ckpt" / ".tmp_step_0000009").mkdir()
    (tmp_path / "ckpt" / "step_0000010").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_0000003"

    want_s = {k: v.full_tensor().clone() for k, v in student.state_dict().items()}
    want_t = {k: v.full_tensor().clone() for k, v in teacher.state_dict().items()}
    want_opt = {n: {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in opt.state[p].items()}
                for n, p in student.named_parameters() if p in opt.state}
    assert "backbone.mask_token" not in want_opt  # never had a gradient: no AdamW state saved
    s2, t2 = _nets(load_config(None, TINY + ["train.seed=5"]))
    opt2 = build_optimizer(s2, cfg.optim, 12)
    got = TrainState.create(256, torch.device("cpu"), False, loader=_Position())
    second = CheckpointManager(tmp_path, env, every=1, keep=2, max_steps=100)
    second.register(s2, t2, opt2, got)
    assert second.resume() == 3 and got.loader.pos == 3  # step_0000010 (no manifest) skipped
    assert got.step == 3 and torch.equal(got.dino_center, state.dino_center)
    for k, v in s2.state_dict().items():
        torch.testing.assert_close(v.full_tensor(), want_s[k], rtol=0, atol=0)
    for k, v in t2.state_dict().items():
        torch.testing.assert_close(v.full_tensor(), want_t[k], rtol=0, atol=0)
    restored = {n: {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in opt2.state[p].items()}
                for n, p in s2.named_parameters() if p in opt2.state}
    assert set(want_opt) <= set(restored) and len(want_opt) > 100
    for name, want_state in want_opt.items():
        for k in want_state:
            torch.testing.assert_close(restored[name][k], want_state[k], rtol=0, atol=0)
    # the missing state is the zero state AdamW starts from
    assert float(restored["backbone.mask_token"]["exp_avg"].abs().sum()) == 0.0


# ----------------------------------------------------------------------------- init and AC
@pytest.mark.slow
def test_init_from_hf_weights_first_forward_equals_transformers(group, tmp_path):
    transformers = pytest.importorskip("transformers")
    from dinotrain.models import build_backbone, build_head
    from dinotrain.models.convert import save_dino_head, to_hf

    torch.manual_seed(1)
    src = build_backbone(load_config(None, TINY).model, device="cpu")
    with torch.no_grad():  # LayerScale at 1e-5 would hide the blocks: make every weight matter
        for blk in src.blocks:
            blk.ls1.gamma.fill_(0.5)
            blk.ls2.gamma.fill_(0.5)
        src.cls_token.normal_()
    to_hf(src, tmp_path / "hf")
    head = build_head(192, load_config(None, TINY).ssl, device="cpu")
    save_dino_head(head, tmp_path / "dino_head.safetensors")
    cfg = load_config(None, TINY + [f"model.pretrained={tmp_path / 'hf'}",
                                    f"model.pretrained_head={tmp_path / 'dino_head.safetensors'}"])
    student, teacher = _nets(cfg)
    for name, p in head.state_dict().items():  # RAD-DINO-style released head, in student and teacher
        torch.testing.assert_close(student.dino_head.state_dict()[name].full_tensor(), p, rtol=0, atol=0)
        torch.testing.assert_close(teacher.dino_head.state_dict()[name].full_tensor(), p, rtol=0, atol=0)
    hf = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state
        student.eval()
        got_s = student(x)["global_cls"]  # through FSDP's root forward, as training calls it
        got_t = teacher(x)["global_cls"]
    torch.testing.assert_close(got_s, want[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_t, want[:, 0], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        fresh = build_backbone(cfg.model, device="cpu")(x)
    assert float((got_s - fresh).abs().max()) > 1e-3  # not a fresh init


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_gradients(group):

    torch.manual_seed(0)
    x = torch.randn(2, 3, 56, 56)
    grads = {}
    for mode in ("none", "full", "selective"):
        cfg = load_config(None, TINY + [f"parallel.activation_checkpointing={mode}"])
        student, _ = _nets(cfg)
        student(x)["global_cls_logits"].logsumexp(-1).mean().backward()
        grads[mode] = [p.grad.full_tensor().clone() for p in student.parameters() if p.grad is not None]
    for mode in ("full", "selective"):
        assert len(grads[mode]) == len(grads["none"])
        for a, b in zip(grads[mode], grads["none"]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
