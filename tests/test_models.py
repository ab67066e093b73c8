"""The ViT/14 backbone and the DINO head: shapes, DINOv2 init, meta device, multi-crop packing."""

from __future__ import annotations

import pytest
import torch

from dinotrain.config import schema
from dinotrain.models import DINOHead, build_backbone, build_head, vit_tiny
from dinotrain.models.attention import PackedLayout, block_diagonal_bias, resolve_backend, xformers_available
from dinotrain.models.vit import ARCHS, drop_path, swiglu_hidden


def tiny(**kw):
    torch.manual_seed(0)
    kw = {"img_size": 56, "depth": 2, **kw}
    return vit_tiny(**kw).eval()


def perturb(model, scale=0.05, seed=1):
    """Random non-trivial weights (init leaves LayerScale at 1e-5, hiding most bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.7)
    return model


def expected_params(dim, depth, hidden, swiglu, grid, patch=14, chans=3, regs=0):
    """An independent count of DINOv2's ViT parameters."""
    ffn = (dim * 2 * hidden + 2 * hidden + hidden * dim + dim) if swiglu else (2 * dim * hidden + hidden + dim)
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * dim + ffn
    embed = chans * patch * patch * dim + dim + dim + (grid * grid + 1) * dim + dim + regs * dim
    return embed + depth * block + 2 * dim


@pytest.mark.parametrize("arch", list(ARCHS))
def test_meta_device_builds_every_arch_without_memory(arch):
    cfg = schema().model
    cfg.arch = arch
    cfg.ffn = "swiglu" if arch == "vit_giant2" else "mlp"
    model = build_backbone(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    spec = ARCHS[arch]
    dim = spec["embed_dim"]
    assert (model.embed_dim, model.n_blocks, model.num_heads) == (dim, spec["depth"], spec["num_heads"])
    assert dim // model.num_heads == 64 or arch == "vit_tiny"
    hidden = swiglu_hidden(dim, 4) if cfg.ffn == "swiglu" else 4 * dim
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_params(dim, spec["depth"], hidden, cfg.ffn == "swiglu", 518 // 14)
    if arch == "vit_giant2":
        assert 1.13e9 < n < 1.14e9  # DINOv2's ViT-g/14: 1.1B
        assert hidden == 4096
    if arch == "vit_large":
        assert 3.0e8 < n < 3.1e8  # ViT-L/14: 304M


def test_build_backbone_dinov2_init_and_seed():
    cfg = schema().model
    cfg.arch, cfg.img_size, cfg.num_register_tokens = "vit_small", 224, 4
    torch.manual_seed(3)
    a = build_backbone(cfg, depth=4)
    torch.manual_seed(3)
    b = build_backbone(cfg, depth=4)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert a.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert 0 < a.cls_token.abs().max().item() < 1e-5
    assert 0 < a.register_tokens.abs().max().item() < 1e-5
    assert torch.count_nonzero(a.mask_token) == 0
    blk = a.blocks[3]
    for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
        assert lin.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert lin.weight.abs().max().item() <= 2.0
        assert torch.count_nonzero(lin.bias) == 0
    assert torch.all(blk.ls1.gamma == 1e-5) and torch.all(blk.ls2.gamma == 1e-5)
    assert torch.all(blk.norm1.weight == 1) and torch.count_nonzero(blk.norm1.bias) == 0
    assert a.blocks[0].drop_path_rate == a.blocks[-1].drop_path_rate == cfg.drop_path_rate  # uniform


def test_forward_features_dict_and_masks():
    model = perturb(tiny(num_register_tokens=2))
    x = torch.randn(3, 3, 56, 56)
    masks = torch.zeros(3, 16, dtype=torch.bool)
    masks[0, 5] = masks[2, :4].fill_(True)[0]  # image 0: patch 5; image 2: patches 0-3
    masks[0, 5] = True
    with torch.no_grad():
        out = model.forward_features(x, masks)
        assert out["x_norm_clstoken"].shape == (3, 192)
        assert out["x_norm_regtokens"].shape == (3, 2, 192)
        assert out["x_norm_patchtokens"].shape == (3, 16, 192)
        assert out["x_prenorm"].shape == (3, 1 + 2 + 16, 192)
        assert out["masks"] is masks
        assert torch.allclose(model(x, masks), out["x_norm_clstoken"])
        # a masked patch's pixels cannot matter: it is replaced by the mask token
        x2 = x.clone()
        x2[0, :, 14:28, 14:28] = 5.0  # patch row 1, col 1 = index 5
        assert torch.allclose(model.forward_features(x2, masks)["x_prenorm"], out["x_prenorm"], atol=1e-6)
        x2[1, :, 14:28, 14:28] = 5.0  # image 1 is not masked there: its output changes
        assert not torch.allclose(model.forward_features(x2, masks)["x_prenorm"][1], out["x_prenorm"][1], atol=1e-3)


def test_position_embeddings_native_and_resampled():
    model = tiny()
    assert model.interpolate_pos_encoding(16, 56, 56) is model.pos_embed
    with torch.no_grad():
        model.pos_embed.fill_(0.25)
        for offset in (0.1, 0.0):
            model.interpolate_offset = offset
            pos = model.interpolate_pos_encoding(12, 42, 56)  # 3 x 4 patches
            assert pos.shape == (1, 13, 192)
            assert torch.allclose(pos, torch.full_like(pos, 0.25), atol=1e-6)  # bicubic keeps constants
        out = model.forward_features(torch.randn(2, 3, 42, 70))
    assert out["x_norm_patchtokens"].shape == (2, 15, 192)


def test_non_multiple_input_is_refused():
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tiny().forward_features(torch.randn(1, 3, 50, 56))


def _separate(model, xs, ms):
    return [model.forward_features(x, m) for x, m in zip(xs, ms)]


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_dense"])
@pytest.mark.parametrize("ffn,regs", [("mlp", 0), ("swiglu", 4)])
def test_list_forward_equals_separate_forwards(backend, ffn, regs):
    """`sdpa_dense` runs xformers' packed layout (one sequence, block-diagonal mask) through SDPA."""
    model = perturb(tiny(ffn=ffn, num_register_tokens=regs, attn_backend=backend))
    torch.manual_seed(5)
    xg, xl = torch.randn(2, 3, 56, 56), torch.randn(4, 3, 28, 28)
    masks = torch.rand(2, 16) < 0.4
    ref_model = perturb(tiny(ffn=ffn, num_register_tokens=regs, attn_backend="sdpa"))
    ref = _separate(ref_model, [xg, xl], [masks, None])
    xs = [xg.clone().requires_grad_(), xl.clone().requires_grad_()]
    got = model.forward_features_list(xs, [masks, None])
    for r, g in zip(ref, got):
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            assert g[key].shape == r[key].shape
            assert torch.allclose(g[key], r[key], atol=1e-5), key
    assert got[0]["masks"] is masks and got[1]["masks"] is None
    # gradients through the packed path equal those of separate forwards
    sum(o["x_norm_clstoken"].square().sum() + o["x_norm_patchtokens"].sum() for o in got).backward()
    xr = [xg.clone().requires_grad_(), xl.clone().requires_grad_()]
    sep = _separate(ref_model, xr, [masks, None])
    sum(o["x_norm_clstoken"].square().sum() + o["x_norm_patchtokens"].sum() for o in sep).backward()
    for a, b in zip(xs, xr):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    gp = dict(model.named_parameters())
    for n, p in ref_model.named_parameters():
        assert torch.allclose(gp[n].grad, p.grad, atol=1e-4), n


def test_block_diagonal_bias_matches_explicit_loop():
    seqlens = [3, 3, 2, 2, 2]
    bias = block_diagonal_bias(seqlens)
    T = sum(seqlens)
    owner = []
    for i, n in enumerate(seqlens):
        owner += [i] * n
    for r in range(T):
        for c in range(T):
            assert bias[r, c].item() == (0.0 if owner[r] == owner[c] else float("-inf"))
    layout = PackedLayout([(2, 3), (3, 2)])
    assert layout.seqlens == seqlens and layout.offsets == [0, 6, 12] and layout.n_images == 5
    assert torch.equal(layout.token_image_index(torch.device("cpu")), torch.tensor(owner))
    if xformers_available():  # the real mask, materialised, must be what we test on CPU
        from xformers.ops import fmha

        dense = fmha.BlockDiagonalMask.from_seqlens(seqlens).materialize((T, T))
        assert torch.equal(dense, bias)


def test_backend_resolution():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, xformers_importable=True) == "sdpa"
    assert resolve_backend("auto", torch.device("cuda"), xformers_importable=True) == "xformers"
    assert resolve_backend("auto", torch.device("cuda"), xformers_importable=False) == "sdpa"
    with pytest.raises(RuntimeError, match="needs CUDA"):
        resolve_backend("xformers", cpu, xformers_importable=True)
    with pytest.raises(RuntimeError, match="not installed"):
        resolve_backend("xformers", torch.device("cuda"), xformers_importable=False)
    with pytest.raises(ValueError, match="allowed values"):
        resolve_backend("flash", cpu, xformers_importable=False)


def test_drop_path_is_per_image_in_packed_sequences():
    torch.manual_seed(0)
    layout = PackedLayout([(6, 5), (10, 2)])
    x = torch.ones(1, 50, 4)
    out = drop_path(x, 0.5, True, layout)
    idx = layout.token_image_index(x.device)
    for img in range(16):
        vals = out[0, idx == img].unique()
        assert len(vals) == 1 and vals.item() in (0.0, 2.0)
    assert 0 < (out[0, :, 0] == 0).sum() < 50
    assert torch.equal(drop_path(x, 0.5, False, layout), x)
    # and in training, the drop-path model's list forward runs
    model = tiny(drop_path_rate=0.5).train()
    outs = model.forward_features_list([torch.randn(2, 3, 56, 56), torch.randn(3, 3, 28, 28)], [None, None])
    assert [o["x_norm_clstoken"].shape[0] for o in outs] == [2, 3]


def test_get_intermediate_layers():
    model = perturb(tiny(num_register_tokens=1))
    x = torch.randn(2, 3, 56, 42)
    with torch.no_grad():
        last = model.forward_features(x)
        (patch,) = model.get_intermediate_layers(x, 1)
        assert torch.allclose(patch, last["x_norm_patchtokens"], atol=1e-6)
        both = model.get_intermediate_layers(x, [0, 1], reshape=True, return_class_token=True)
        assert len(both) == 2
        fmap, cls = both[1]
        assert fmap.shape == (2, 192, 4, 3) and cls.shape == (2, 192)
        assert torch.allclose(cls, last["x_norm_clstoken"], atol=1e-6)
        assert torch.allclose(fmap.flatten(2).transpose(1, 2), last["x_norm_patchtokens"], atol=1e-6)
        raw = model.get_intermediate_layers(x, [1], norm=False)[0]
        assert torch.allclose(raw, last["x_prenorm"][:, 2:], atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(x, [5])


def test_dino_head():
    torch.manual_seed(0)
    head = DINOHead(192, out_dim=300, hidden_dim=64, bottleneck_dim=32, nlayers=3)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert torch.all(head.last_layer.weight_g == 1)
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(300), atol=1e-6)  # unit rows at init
    x = torch.randn(8, 192, requires_grad=True)
    logits = head(x)
    assert logits.shape == (8, 300)
    assert logits.abs().max().item() <= 1.0 + 1e-5  # unit bottleneck . unit prototype = cosine
    # the same logits from an explicit computation
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    v = head.last_layer.weight_v
    assert torch.allclose(logits, z @ (v / v.norm(dim=1, keepdim=True)).t(), atol=1e-6)
    logits.sum().backward()
    assert head.last_layer.weight_g.grad is not None and x.grad is not None
    cfg = schema().ssl
    meta = build_head(768, cfg, device="meta")
    assert meta.last_layer.weight_v.is_meta and meta.last_layer.weight_v.shape == (65536, 256)
    assert DINOHead(16, 8, nlayers=1, bottleneck_dim=4)(torch.randn(2, 16)).shape == (2, 8)


def test_ffn_auto_follows_the_released_architecture():
    from dinotrain.config import load_config

    giant = build_backbone(load_config(None, ["model.arch=vit_giant2"]).model, device="meta")
    base = build_backbone(load_config(None, ["model.arch=vit_base"]).model, device="meta")
    forced = build_backbone(load_config(None, ["model.arch=vit_base", "model.ffn=swiglu"]).model, device="meta")
    assert (giant.ffn, base.ffn, forced.ffn) == ("swiglu", "mlp", "swiglu")
