"""Weights in and out: DINOv2 naming, Hugging Face Dinov2Model (checked with transformers), the
DINO head, the safe loader, and `dinotrain export`."""

from __future__ import annotations

import json

import pytest
import torch

from dinotrain.cli import main as cli_main
from dinotrain.config import load_config, save_config
from dinotrain.models import DINOHead, build_backbone, vit_tiny
from dinotrain.models.convert import (
    from_dinov2,
    from_hf,
    load_backbone,
    load_dino_head,
    load_state_dict_file,
    save_dino_head,
    save_dinov2,
    to_dinov2,
    to_hf,
)

transformers = pytest.importorskip("transformers")


def random_vit(**kw):
    torch.manual_seed(0)
    model = vit_tiny(**{"img_size": 56, "depth": 2, **kw}).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def close(a, b, atol=1e-5):
    return torch.allclose(a, b, atol=atol)


def published_dinov2_keys(depth: int, swiglu: bool, registers: bool) -> set[str]:
    """The key set of a published `dinov2_vit*14` state dict, written out independently."""
    keys = {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias"}
    if registers:
        keys.add("register_tokens")
    ffn = ["mlp.w12", "mlp.w3"] if swiglu else ["mlp.fc1", "mlp.fc2"]
    for i in range(depth):
        for mod in ["norm1", "attn.qkv", "attn.proj", "norm2", *ffn]:
            keys |= {f"blocks.{i}.{mod}.weight", f"blocks.{i}.{mod}.bias"}
        keys |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    return keys


def test_dinov2_naming_is_the_published_one():
    cfg = load_config(overrides=["model.arch=vit_base"])
    assert set(build_backbone(cfg.model, device="meta").state_dict()) == published_dinov2_keys(12, False, False)
    m = random_vit(ffn="swiglu", num_register_tokens=4)
    sd = to_dinov2(m)
    assert set(sd) == published_dinov2_keys(2, True, True)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * 192, 192)
    assert sd["mask_token"].shape == (1, 192) and sd["register_tokens"].shape == (1, 4, 192)


@pytest.mark.parametrize("regs,ffn", [(0, "mlp"), (4, "swiglu")])
def test_to_hf_loads_in_transformers_with_same_outputs(tmp_path, regs, ffn):
    model = random_vit(num_register_tokens=regs, ffn=ffn, layerscale_init=0.5)
    out = to_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ("dinov2_with_registers" if regs else "dinov2")
    hf = transformers.AutoModel.from_pretrained(out).eval()
    assert type(hf).__name__ == ("Dinov2WithRegistersModel" if regs else "Dinov2Model")
    x = torch.randn(2, 3, 56, 56)
    masks = torch.rand(2, 16) < 0.3
    with torch.no_grad():
        h = hf(pixel_values=x, bool_masked_pos=masks).last_hidden_state
        ours = model.forward_features(x, masks)
        assert close(h[:, 0], ours["x_norm_clstoken"])
        assert close(h[:, 1 + regs:], ours["x_norm_patchtokens"])
        # from_hf rebuilds the model with HF's resampling: equal at another input size too
        back = from_hf(out).eval()
        x2 = torch.randn(1, 3, 42, 70)
        h2 = hf(pixel_values=x2).last_hidden_state
        f2 = back.forward_features(x2)
        assert close(h2[:, 0], f2["x_norm_clstoken"]) and close(h2[:, 1 + regs:], f2["x_norm_patchtokens"])
        # the in-memory transformers-5 state dict (q_proj / gate_proj names) imports too
        again = from_hf(hf.state_dict(), model=vit_tiny(img_size=56, depth=2, num_register_tokens=regs, ffn=ffn,
                                                        layerscale_init=0.5).eval())
        assert close(again(x), model(x))


def test_from_dinov2_training_checkpoint_layout_and_grey(tmp_path):
    model = random_vit()
    sd = to_dinov2(model)
    # DINOv2 training checkpoint: {"teacher": {"backbone.blocks.<chunk>.<i>...", "dino_head...": ...}}
    wrapped = {}
    for k, v in sd.items():
        k = k.replace("blocks.0.", "blocks.0.0.").replace("blocks.1.", "blocks.0.1.")
        wrapped[f"backbone.{k}"] = v
    wrapped["dino_head.mlp.0.weight"] = torch.zeros(3, 192)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": wrapped, "iteration": 7}, path)
    loaded = from_dinov2(path).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert close(loaded(x), model(x), atol=1e-6)
        # a grey model from 3-channel weights: summing the kernel is exact for repeated channels
        grey = from_dinov2(sd, vit_tiny(img_size=56, depth=2, in_chans=1)).eval()
        g = torch.randn(2, 1, 56, 56)
        assert close(grey(g), model(g.repeat(1, 3, 1, 1)))
        # another position grid: embeddings resampled to the model's size
        big = from_dinov2(sd, vit_tiny(img_size=84, depth=2)).eval()
        assert big.pos_embed.shape == (1, 37, 192)
        assert big(torch.randn(1, 3, 84, 84)).shape == (1, 192)
    with pytest.raises(ValueError, match="Hugging Face"):
        from_dinov2({f"embeddings.{k}": v for k, v in sd.items()})


def test_save_dinov2_roundtrip_keeps_architecture(tmp_path):
    model = random_vit(num_register_tokens=2)
    path = save_dinov2(model, tmp_path)
    assert path.name == "dinov2.safetensors"
    back = load_backbone(path).eval()  # dinov2_config.json carries heads and resampling
    x = torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        assert close(back(x), model(x), atol=1e-6)
        # a model built from another live model's state dict owns its weights
        clone = from_dinov2(model.state_dict())
        clone.cls_token.add_(1.0)
        assert not torch.equal(clone.cls_token, model.cls_token)


def test_safe_loader_refuses_pickle(tmp_path):
    sd = {"a": torch.ones(2)}
    torch.save(sd, tmp_path / "ok.pth")
    assert torch.equal(load_state_dict_file(tmp_path / "ok.pth")["a"], torch.ones(2))
    torch.save({"a": torch.ones(2), "opt": _Opaque()}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="needs pickle.*safetensors"):
        load_state_dict_file(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_state_dict_file(tmp_path / "missing.safetensors")


class _Opaque:
    """A custom object: only a pickle-based load can rebuild it."""


def test_dino_head_rad_dino_layout(tmp_path):
    torch.manual_seed(0)
    head = DINOHead(192, out_dim=50, hidden_dim=32, bottleneck_dim=16)
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    path = save_dino_head(head, tmp_path / "dino_head.safetensors")
    from safetensors.torch import load_file

    assert set(load_file(path)) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight",
                                    "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"}
    back = load_dino_head(path)
    assert (back.in_dim, back.out_dim, back.hidden_dim, back.bottleneck_dim, back.nlayers) == (192, 50, 32, 16, 3)
    x = torch.randn(4, 192)
    assert close(back(x), head(x), atol=1e-6)
    # torch's own weight norm (parametrizations) gives the same layer: our maths is its maths
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(16, 50, bias=False))
    sd = {k: v for k, v in head.state_dict().items() if k.startswith("mlp.")}
    sd["last_layer.parametrizations.weight.original0"] = head.last_layer.weight_g.detach()
    sd["last_layer.parametrizations.weight.original1"] = head.last_layer.weight_v.detach()
    ref.parametrizations.weight.original0.data.copy_(head.last_layer.weight_g)
    ref.parametrizations.weight.original1.data.copy_(head.last_layer.weight_v)
    z = torch.randn(3, 16)
    assert close(ref(z), head.last_layer(z), atol=1e-6)
    assert close(load_dino_head(sd)(x), head(x), atol=1e-6)
    with pytest.raises(ValueError, match="not a DINO head"):
        load_dino_head({"foo": torch.zeros(1)})


def test_export_cli_file_folder_and_run_dir(tmp_path, capsys, monkeypatch):
    model = random_vit()
    path = save_dinov2(model, tmp_path / "w")
    x = torch.randn(1, 3, 56, 56)
    # weights file -> HF folder that transformers loads
    assert cli_main(["export", str(path), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert close(hf(pixel_values=x).pooler_output, model(x))
    # HF folder -> DINOv2 format
    assert cli_main(["export", str(tmp_path / "hf"), "--format", "dinov2", "--out", str(tmp_path / "d2")]) == 0
    with torch.no_grad():
        assert close(load_backbone(tmp_path / "d2" / "dinov2.safetensors").eval()(x), model(x))
    # a run directory is read without importing the trainer (dinotrain.train blocked): here from
    # its latest export + config.yaml
    for mod in ("dinotrain.train", "dinotrain.train.checkpoint", "dinotrain.train.loop", "dinotrain.train.trainer"):
        monkeypatch.setitem(__import__("sys").modules, mod, None)
    run = tmp_path / "run"
    cfg = load_config(overrides=["model.arch=vit_tiny", "model.img_size=56", "model.num_register_tokens=0"])
    save_config(cfg, run)
    assert cli_main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "none")]) == 2
    assert "export/latest/dinov2.safetensors" in capsys.readouterr().err
    full = build_backbone(cfg.model)  # 12 blocks, as the run's config says
    save_dinov2(full, run / "export" / "latest")
    assert cli_main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf_run")]) == 0
    assert json.loads((tmp_path / "hf_run" / "config.json").read_text())["num_hidden_layers"] == 12
    assert cli_main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
