"""Weights in and out: DINOv2's own naming, the Hugging Face `Dinov2Model` layout, the DINO head.

Our parameter names ARE DINOv2's (see vit.py), so:
- `from_dinov2(state_dict_or_path, model=None)` -> VisionTransformer: published `dinov2_vit*14`
  files, DINOv2 training checkpoints (`teacher` / `backbone.` prefixes, chunked `blocks.C.N`).
- `to_dinov2(model)` -> state dict in DINOv2 naming; `save_dinov2(model, out_dir)` writes
  `dinov2.safetensors` + `dinov2_config.json` (the constructor arguments).
- `from_hf(dir_or_state_dict, model=None)` -> VisionTransformer: `microsoft/rad-dino`,
  `facebook/dinov2-*` (+ `-with-registers`) folders or state dicts, both the published split
  `attention.attention.{query,key,value}` names and transformers 5's `q_proj/k_proj/v_proj`.
- `to_hf(model, out_dir)` writes `config.json` + `model.safetensors` that
  `transformers.AutoModel.from_pretrained(out_dir)` loads (published naming, which every
  transformers version reads), and `preprocessor_config.json` for `AutoImageProcessor`.
- `load_dino_head(path)` -> DINOHead (RAD-DINO's `dino_head.safetensors`), `save_dino_head`.

`from_*` with `model=None` build the architecture the weights describe; with `model` given they
load into it (3-channel patch kernels are summed for a 1-channel model, position embeddings are
resampled to its grid) and return it. Files are read with `load_state_dict_file`: safetensors,
or `torch.load(weights_only=True)`; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dinotrain.atomic import atomic_path, write_json
from dinotrain.models.heads import DINOHead
from dinotrain.models.vit import VisionTransformer

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("teacher", "student", "model", "state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.", "teacher.", "student.", "backbone.", "dinov2.", "model.")


# ----------------------------------------------------------------------------- files
def load_state_dict_file(path: str | Path) -> StateDict:
    """A flat {name: tensor} from a .safetensors file, or a torch file loadable without pickle.

    Torch files that need pickle (arbitrary objects) are refused: convert them once, where you
    trust the file, with the command the error shows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise ValueError(
            f"{path}: this file needs pickle to load, which dinotrain never does (it can run code). "
            "If you trust it, convert it once to safetensors: python -c \"import torch; "
            "from safetensors.torch import save_file; sd = torch.load('" + str(path) + "', weights_only=False); "
            "sd = sd.get('teacher', sd.get('model', sd)); "
            "save_file({k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}, "
            "'" + str(path.with_suffix('.safetensors')) + "')\""
            f" (torch said: {str(e).splitlines()[0][:200]})"
        ) from None
    return _flatten(obj, str(path))


def _flatten(obj: Any, origin: str) -> StateDict:
    """Unwrap {'teacher': {...}} / {'model': {...}} containers into one flat tensor dict."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{origin}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            return _flatten(obj[key], origin)
    out = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise ValueError(f"{origin}: no tensors found (keys: {', '.join(list(obj)[:10])})")
    return out


def _materialise(sd: Mapping[str, Any]) -> StateDict:
    """Plain contiguous CPU tensors (DTensors gathered), as safetensors needs them."""
    out = {}
    for k, v in sd.items():
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _save_safetensors(sd: StateDict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(_materialise(sd), str(tmp), metadata=metadata)
    return path


# ----------------------------------------------------------------------------- naming
def _strip_prefixes(sd: Mapping[str, torch.Tensor], drop: tuple[str, ...] = (),
                    prefixes: tuple[str, ...] = _PREFIXES) -> StateDict:
    """Keys without any leading wrapper `prefixes` (repeatedly); keys starting with `drop` are left out."""
    out = {}
    for k, v in sd.items():
        if any(k.startswith(d) for d in drop):
            continue
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def sub_state_dict(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries under `prefix` (e.g. "backbone." of a student/teacher), without it."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def normalize_dinov2_keys(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """DINOv2 naming without wrappers: no `teacher.`/`backbone.` prefixes, chunked blocks
    (`blocks.C.N.*` from block_chunks > 0) renumbered to `blocks.N.*`, heads dropped."""
    sd = _strip_prefixes(sd, drop=("dino_head.", "ibot_head.", "teacher.dino_head.", "teacher.ibot_head.",
                                   "student.dino_head.", "student.ibot_head."))
    chunked = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")
    out = {}
    for k, v in sd.items():
        m = chunked.match(k)
        out[f"blocks.{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


def is_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("embeddings.", "encoder.layer.", "dinov2.embeddings.")) for k in sd)


# The one table of Hugging Face names. Ours (DINOv2's) -> the published HF name first (what
# `to_hf` writes, which every transformers version reads), then other names that load
# (transformers 5). q/k/v and SwiGLU gate/up are split tensors: handled beside the table.
_HF_TOP = {
    "cls_token": ("embeddings.cls_token",),
    "mask_token": ("embeddings.mask_token",),
    "pos_embed": ("embeddings.position_embeddings",),
    "register_tokens": ("embeddings.register_tokens",),
    "patch_embed.proj.weight": ("embeddings.patch_embeddings.projection.weight",),
    "patch_embed.proj.bias": ("embeddings.patch_embeddings.projection.bias",),
    "norm.weight": ("layernorm.weight",),
    "norm.bias": ("layernorm.bias",),
}
_HF_BLOCK_MODULES = {  # inside `blocks.N.` <-> `encoder.layer.N.`, each with .weight and .bias
    "norm1": ("norm1",),
    "norm2": ("norm2",),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "mlp.fc1": ("mlp.fc1",),
    "mlp.fc2": ("mlp.fc2",),
    "mlp.w12": ("mlp.weights_in",),
    "mlp.w3": ("mlp.weights_out", "mlp.down_proj"),
}
_HF_BLOCK = {
    **{f"{ours}.{kind}": tuple(f"{h}.{kind}" for h in hf) for ours, hf in _HF_BLOCK_MODULES.items()
       for kind in ("weight", "bias")},
    "ls1.gamma": ("layer_scale1.lambda1",),
    "ls2.gamma": ("layer_scale2.lambda1",),
}
# the inverse: every HF name that loads -> ours
_FROM_HF_TOP = {h: ours for ours, names in _HF_TOP.items() for h in names}
_FROM_HF_BLOCK = {h: ours for ours, names in _HF_BLOCK.items() for h in names}
_HF_QKV = re.compile(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")
_HF_GATE_UP = re.compile(r"mlp\.(gate|up)_proj\.(weight|bias)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")


def _join_parts(groups: dict[tuple[str, str], dict[str, torch.Tensor]], order: tuple[str, ...], target: str,
                what: str) -> StateDict:
    """Concatenate split tensors (q, k, v or gate, up) of each (layer, weight|bias) in `order`."""
    out = {}
    for (i, kind), parts in groups.items():
        if set(parts) != set(order):
            raise ValueError(f"HF weights: layer {i} {what} {kind} has only {sorted(parts)} of {', '.join(order)}")
        out[f"blocks.{i}.{target}.{kind}"] = torch.cat([parts[o] for o in order], dim=0)
    return out


def hf_to_dinov2_keys(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """HF `Dinov2Model` (published or transformers-5 names) -> DINOv2 naming, qkv fused."""
    sd = _strip_prefixes(sd, drop=("classifier.",))
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (layer, weight|bias) -> q/k/v
    gate_up: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        m = _HF_LAYER.match(k)
        if k in _FROM_HF_TOP:
            out[_FROM_HF_TOP[k]] = v
        elif m and m.group(2) in _FROM_HF_BLOCK:
            out[f"blocks.{m.group(1)}.{_FROM_HF_BLOCK[m.group(2)]}"] = v
        elif m and (q := _HF_QKV.match(m.group(2))):
            qkv.setdefault((m.group(1), q.group(3)), {})[(q.group(1) or q.group(2))[0]] = v
        elif m and (g := _HF_GATE_UP.match(m.group(2))):
            gate_up.setdefault((m.group(1), g.group(2)), {})[g.group(1)] = v
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"HF weights: unexpected keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''}: "
                         "expected a Dinov2Model / Dinov2WithRegistersModel state dict")
    out.update(_join_parts(qkv, ("q", "k", "v"), "attn.qkv", "attention"))
    out.update(_join_parts(gate_up, ("gate", "up"), "mlp.w12", "SwiGLU"))
    return out


def dinov2_to_hf_keys(sd: Mapping[str, torch.Tensor], embed_dim: int) -> StateDict:
    """DINOv2 naming -> the published HF `Dinov2Model` names (split query/key/value)."""
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
        if k in _HF_TOP:
            out[_HF_TOP[k][0]] = v
        elif m and m.group(2) in _HF_BLOCK:
            out[f"encoder.layer.{m.group(1)}.{_HF_BLOCK[m.group(2)][0]}"] = v
        elif m and m.group(2).startswith("attn.qkv."):
            kind = m.group(2).rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), v.split(embed_dim, dim=0)):
                out[f"encoder.layer.{m.group(1)}.attention.attention.{name}.{kind}"] = part
        else:
            raise ValueError(f"to_hf: no HF name for parameter '{k}'")
    return out


# ----------------------------------------------------------------------------- architecture
def infer_arch(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """VisionTransformer arguments from DINOv2-named weights. Heads are not stored in weights:
    every DINOv2 model has 64-wide heads, so num_heads = embed_dim / 64 unless given."""
    for need in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if need not in sd:
            raise ValueError(f"not a DINOv2 ViT state dict: '{need}' is missing (found e.g. {list(sd)[:5]})")
    embed_dim = sd["cls_token"].shape[-1]
    patch_w = sd["patch_embed.proj.weight"]
    patch = patch_w.shape[-1]
    n_pos = sd["pos_embed"].shape[1] - 1
    grid = int(math.isqrt(n_pos))
    if grid * grid != n_pos:
        raise ValueError(f"pos_embed holds {n_pos} positions, not a square grid")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    swiglu = "blocks.0.mlp.w12.weight" in sd
    hidden = sd["blocks.0.mlp.w3.weight"].shape[1] if swiglu else sd["blocks.0.mlp.fc1.weight"].shape[0]
    regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    return dict(
        img_size=grid * patch, patch_size=patch, in_chans=patch_w.shape[1], embed_dim=embed_dim, depth=depth,
        num_heads=num_heads or max(embed_dim // 64, 1), mlp_ratio=4.0, ffn="swiglu" if swiglu else "mlp",
        ffn_hidden_dim=hidden, num_register_tokens=regs,
        layerscale_init=1e-5 if "blocks.0.ls1.gamma" in sd else None,
        # DINOv2's register models resample position embeddings with antialias and no offset
        interpolate_offset=0.0 if regs else 0.1, interpolate_antialias=bool(regs),
    )


def _resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    n = pos.shape[1] - 1
    m = int(math.isqrt(n))
    patch = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([pos[:, :1].float(), patch], dim=1).to(pos.dtype)


def adapt_state_dict(sd: StateDict, model: VisionTransformer) -> StateDict:
    """Fit DINOv2-named weights to `model`: patch kernel channels, position grid, missing mask token."""
    sd = dict(sd)
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.shape[1] != model.in_chans:
        if model.in_chans == 1:
            # a grey image repeated to 3 channels gives sum_c W_c * x: summing the kernel is exact
            sd["patch_embed.proj.weight"] = w.sum(dim=1, keepdim=True)
        elif w.shape[1] == 1:
            sd["patch_embed.proj.weight"] = w.repeat(1, model.in_chans, 1, 1) / model.in_chans
        else:
            raise ValueError(f"patch kernel has {w.shape[1]} input channels, the model {model.in_chans}: "
                             "only 3 -> 1 and 1 -> C are converted")
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        grid = model.img_size // model.patch_size
        if pos.shape[-1] != model.embed_dim:
            raise ValueError(f"pos_embed width {pos.shape[-1]} != model embed_dim {model.embed_dim}")
        sd["pos_embed"] = _resample_pos_embed(pos, grid)
    if "mask_token" not in sd:
        sd["mask_token"] = torch.zeros(1, model.embed_dim)
    return sd


def _load_into(model: VisionTransformer, sd: StateDict, strict: bool, origin: str) -> VisionTransformer:
    sd = adapt_state_dict(sd, model)
    ref = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs model {tuple(ref[k].shape)}" for k, v in sd.items()
           if k in ref and v.shape != ref[k].shape]
    if bad:
        raise ValueError(f"{origin}: shapes do not match the model: {'; '.join(bad[:4])}")
    on_meta = model.cls_token.device.type == "meta"
    dtype = model.cls_token.dtype
    # a meta model takes the tensors themselves (assign): copy them, so that the new model never
    # shares storage with the caller's state dict (e.g. another live model's)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).clone() if on_meta else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=on_meta)
    if strict and (missing or unexpected):
        raise ValueError(f"{origin}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]} "
                         "(pass strict=False to load what matches)")
    return model


def _new_model(kwargs: dict[str, Any]) -> VisionTransformer:
    with torch.device("meta"):
        return VisionTransformer(**kwargs)


def _as_state_dict(src: str | Path | Mapping[str, torch.Tensor]) -> tuple[StateDict, str]:
    if isinstance(src, Mapping):
        return dict(src), "state dict"
    return load_state_dict_file(src), str(src)


# ----------------------------------------------------------------------------- DINOv2
def from_dinov2(src: str | Path | Mapping[str, torch.Tensor], model: VisionTransformer | None = None,
                strict: bool = True, **arch_overrides) -> VisionTransformer:
    """A VisionTransformer holding DINOv2-format weights (file or state dict).

    With `model`, the weights are loaded into it (adapted to its channels and grid) and it is
    returned. Without, the architecture is inferred from the weights (`arch_overrides`, e.g.
    num_heads or attn_backend, replace inferred arguments) and the model is built on CPU.
    """
    sd, origin = _as_state_dict(src)
    sd = normalize_dinov2_keys(sd)
    if is_hf_state_dict(sd):
        raise ValueError(f"{origin}: these are Hugging Face Dinov2Model weights: use from_hf")
    if model is None:
        model = _new_model({**infer_arch(sd, arch_overrides.get("num_heads")), **arch_overrides})
    model = _load_into(model, sd, strict, origin)
    return model


def to_dinov2(model: VisionTransformer) -> StateDict:
    """The backbone's weights in DINOv2's naming (as the published `dinov2_vit*14` files)."""
    return _materialise(model.state_dict())


def save_dinov2(model: VisionTransformer, out_dir: str | Path, name: str = "dinov2") -> Path:
    """`<out_dir>/<name>.safetensors` (DINOv2 naming) + `<name>_config.json` (constructor args)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = model.arch_kwargs()
    path = _save_safetensors(to_dinov2(model), out / f"{name}.safetensors", {"format": "pt", "dinotrain": "dinov2"})
    write_json(out / f"{name}_config.json", arch, indent=2)
    return path


# ----------------------------------------------------------------------------- Hugging Face
def _read_hf_folder(folder: Path) -> tuple[StateDict, dict[str, Any]]:
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return load_state_dict_file(folder / name), config
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: StateDict = {}
        for f in files:
            sd.update(load_state_dict_file(folder / f))
        return sd, config
    raise FileNotFoundError(f"{folder}: no model.safetensors (or pytorch_model.bin) in this Hugging Face folder")


def arch_from_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """VisionTransformer arguments reproducing a HF Dinov2 config (and HF's resampling)."""
    regs = int(config.get("num_register_tokens", 0)) if config.get("model_type") == "dinov2_with_registers" else 0
    img, patch = config.get("image_size", 518), config.get("patch_size", 14)
    img = img[0] if isinstance(img, (list, tuple)) else img
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return dict(
        img_size=int(img), patch_size=int(patch), in_chans=int(config.get("num_channels", 3)),
        embed_dim=int(config["hidden_size"]), depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]), mlp_ratio=float(config.get("mlp_ratio", 4)),
        ffn="swiglu" if config.get("use_swiglu_ffn") else "mlp", num_register_tokens=regs,
        layerscale_init=float(config.get("layerscale_value", 1.0)),
        interpolate_offset=0.0, interpolate_antialias=bool(regs),
    )


def from_hf(src: str | Path | Mapping[str, torch.Tensor], model: VisionTransformer | None = None,
            strict: bool = True, **arch_overrides) -> VisionTransformer:
    """A VisionTransformer holding Hugging Face Dinov2 weights: a folder (config.json +
    model.safetensors), a weights file, or a state dict. Without `model`, the architecture comes
    from config.json (or is inferred from the weights) with HF's position-embedding resampling,
    so the model gives the same outputs as `transformers` at every input size."""
    config: dict[str, Any] = {}
    if isinstance(src, (str, Path)) and Path(src).is_dir():
        sd, config = _read_hf_folder(Path(src))
        origin = str(src)
    else:
        sd, origin = _as_state_dict(src)
    sd = hf_to_dinov2_keys(sd)
    if model is None:
        if config:
            kwargs = arch_from_hf_config(config)
        else:
            kwargs = infer_arch(sd, arch_overrides.get("num_heads"))
            kwargs.update(interpolate_offset=0.0, interpolate_antialias=bool(kwargs["num_register_tokens"]))
        model = _new_model({**kwargs, **arch_overrides})
    return _load_into(model, sd, strict, origin)


def hf_config(model: VisionTransformer) -> dict[str, Any]:
    """The config.json of `to_hf`: Dinov2Model, or Dinov2WithRegistersModel with registers."""
    dim = model.embed_dim
    hidden = model.arch_kwargs()["ffn_hidden_dim"]
    ratio = None
    for r in range(1, 17):  # HF derives the FFN width from an integer mlp_ratio
        width = int(dim * r) if model.ffn == "mlp" else (int(int(dim * r) * 2 / 3) + 7) // 8 * 8
        if width == hidden:
            ratio = r
            break
    if ratio is None:
        raise ValueError(f"to_hf: FFN width {hidden} for embed_dim {dim} is not expressible with an integer "
                         "mlp_ratio, which transformers' Dinov2Config requires")
    regs = model.num_register_tokens
    config: dict[str, Any] = {
        "architectures": ["Dinov2WithRegistersModel" if regs else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if regs else "dinov2",
        "hidden_size": dim,
        "num_hidden_layers": model.n_blocks,
        "num_attention_heads": model.num_heads,
        "mlp_ratio": ratio,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": model.img_size,
        "patch_size": model.patch_size,
        "num_channels": model.in_chans,
        "qkv_bias": True,
        "layerscale_value": float(model.layerscale_init or 1.0),
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": model.ffn == "swiglu",
        "torch_dtype": "float32",
    }
    if regs:
        config["num_register_tokens"] = regs
    else:
        config["use_mask_token"] = True
    return config


def to_hf_state_dict(model: VisionTransformer) -> StateDict:
    sd = to_dinov2(model)
    if model.layerscale_init is None:  # HF always has LayerScale: identity scales
        for i in range(model.n_blocks):
            for j in (1, 2):
                sd[f"blocks.{i}.ls{j}.gamma"] = torch.ones(model.embed_dim)
    return dinov2_to_hf_keys(sd, model.embed_dim)


def hf_preprocessor_config(resolution: int, mean: float, std: float, channels: int = 3) -> dict[str, Any]:
    """`preprocessor_config.json` for `transformers.AutoImageProcessor`, with the fields
    `microsoft/rad-dino` ships (a BitImageProcessor): resize the shorter side to `resolution`
    (bicubic), centre crop `resolution` square, scale to [0, 1], normalise with `mean`/`std`,
    grayscale repeated to RGB. The recipe of `dinotrain.eval.features.preprocess`."""
    return {
        "crop_size": {"height": int(resolution), "width": int(resolution)},
        "do_center_crop": True,
        "do_convert_rgb": channels == 3,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [float(mean)] * channels,
        "image_processor_type": "BitImageProcessor",
        "image_std": [float(std)] * channels,
        "resample": 3,  # PIL.Image.BICUBIC
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": int(resolution)},
    }


def run_preprocessor(data: Any, channels: int = 3) -> dict[str, Any]:
    """The preprocessor config of a training run (`data`: its config's data section): its global
    crop size, what it trained at and what `dinotrain eval` runs it at, and its normalisation."""
    return hf_preprocessor_config(int(data.global_crops_size), float(data.mean), float(data.std), channels)


def to_hf(model: VisionTransformer, out_dir: str | Path, preprocessor: Mapping[str, Any] | None = None) -> Path:
    """Write `config.json` + `model.safetensors` loadable by `transformers.AutoModel`, and
    `preprocessor_config.json` for `AutoImageProcessor` (`preprocessor`, default RAD-DINO's:
    518 px, the schema's mean and std); returns out_dir.

    Outputs match ours exactly at the model's native size. At other sizes HF resamples position
    embeddings by size (antialiased for register models): identical to a model built with
    interpolate_offset=0.0 (from_hf builds those), slightly different from DINOv2's 0.1 offset.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(to_hf_state_dict(model), out / "model.safetensors", {"format": "pt"})
    write_json(out / "config.json", hf_config(model), indent=2)
    if preprocessor is None:
        from dinotrain.config import DataConfig, EvalConfig, default_of

        preprocessor = hf_preprocessor_config(default_of(EvalConfig, "resolution"), default_of(DataConfig, "mean"),
                                              default_of(DataConfig, "std"), model.in_chans)
    write_json(out / "preprocessor_config.json", dict(preprocessor), indent=2)
    return out


# ----------------------------------------------------------------------------- any backbone
def load_backbone(src: str | Path, model: VisionTransformer | None = None, strict: bool = True,
                  **arch_overrides) -> VisionTransformer:
    """Any supported backbone source: a HF folder, or a file in HF or DINOv2 naming."""
    p = Path(src)
    if p.is_dir():
        if (p / "config.json").is_file():
            return from_hf(p, model, strict, **arch_overrides)
        for name in ("dinov2.safetensors", "model.safetensors"):
            if (p / name).is_file():
                return load_backbone(p / name, model, strict, **arch_overrides)
        raise FileNotFoundError(f"{p}: neither a Hugging Face folder (config.json) nor one holding dinov2.safetensors")
    sd = load_state_dict_file(p)
    if is_hf_state_dict(_strip_prefixes(sd)):
        return from_hf(sd, model, strict, **arch_overrides)
    if model is None:
        cfg_path = p.with_name(p.stem + "_config.json")
        if cfg_path.is_file():  # written by save_dinov2: exact architecture, heads included
            arch_overrides = {**json.loads(cfg_path.read_text()), **arch_overrides}
    return from_dinov2(sd, model, strict, **arch_overrides)


# ----------------------------------------------------------------------------- DINO head
def _head_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    out = _strip_prefixes(sd, prefixes=("module.", "teacher.", "student.", "dino_head."))
    out = {k: v for k, v in out.items() if k.startswith(("mlp.", "last_layer."))}
    # torch.nn.utils.parametrizations.weight_norm names, and an unnormalised plain Linear
    if "last_layer.parametrizations.weight.original0" in out:
        out["last_layer.weight_g"] = out.pop("last_layer.parametrizations.weight.original0")
        out["last_layer.weight_v"] = out.pop("last_layer.parametrizations.weight.original1")
    if "last_layer.weight" in out and "last_layer.weight_v" not in out:
        w = out.pop("last_layer.weight")
        out["last_layer.weight_v"] = w
        out["last_layer.weight_g"] = torch.linalg.vector_norm(w, dim=1, keepdim=True)
    return out


def load_dino_head(src: str | Path | Mapping[str, torch.Tensor], head: DINOHead | None = None) -> DINOHead:
    """A DINOHead from DINOv2/RAD-DINO head weights (`mlp.*`, `last_layer.weight_g/_v`)."""
    sd, origin = _as_state_dict(src)
    sd = _head_state_dict(sd)
    linears = sorted({int(k.split(".")[1]) for k in sd if re.match(r"^mlp\.\d+\.weight$", k)})
    if "last_layer.weight_v" not in sd or not (linears or "mlp.weight" in sd):
        raise ValueError(f"{origin}: not a DINO head (expected mlp.* and last_layer.weight_g/weight_v keys, "
                         f"found {list(sd)[:6]})")
    if head is None:
        v = sd["last_layer.weight_v"]
        if linears:
            first, last = sd[f"mlp.{linears[0]}.weight"], sd[f"mlp.{linears[-1]}.weight"]
            kwargs = dict(in_dim=first.shape[1], hidden_dim=first.shape[0], nlayers=len(linears))
        else:
            kwargs = dict(in_dim=sd["mlp.weight"].shape[1], hidden_dim=1, nlayers=1)
            last = sd["mlp.weight"]
        with torch.device("meta"):
            head = DINOHead(out_dim=v.shape[0], bottleneck_dim=last.shape[0], **kwargs)
    on_meta = head.last_layer.weight_v.device.type == "meta"
    missing, unexpected = head.load_state_dict(sd, strict=False, assign=on_meta)
    if missing or unexpected:
        raise ValueError(f"{origin}: DINO head keys do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return head


def save_dino_head(head: DINOHead, path: str | Path) -> Path:
    """The head as `dino_head.safetensors` (RAD-DINO's layout)."""
    return _save_safetensors(head.state_dict(), Path(path), {"format": "pt"})
