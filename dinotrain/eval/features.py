"""Frozen features: RAD-DINO preprocessing, batched extraction, and an on-disk cache.

Preprocessing (the plain path, PIL + numpy): resize so the shorter side is `resolution`
(bicubic), centre crop `resolution` x `resolution`, scale to [0, 1], normalise with mean 0.5307
and std 0.2583, and repeat grayscale to 3 channels. RGB images (dermoscopy) are converted to
grayscale first only when the model takes 1 channel; otherwise their 3 channels are kept.

Cache: one safetensors file per (model, preprocessing, sample) under
`<cache>/<model hash>-r<res>[-dali]/<sha1 of sample key>.safetensors` holding `cls` [D] (float32) and,
once a segmentation task asked for them, `patch` [h, w, D] (float16, to halve the disk).
Sample keys carry the image file's size and mtime, so replaced images are re-extracted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dinotrain.config import DataConfig, default_of

# the schema's normalisation (RAD-DINO's); a run's own comes from its config (eval.loading)
RAD_DINO_MEAN = default_of(DataConfig, "mean")
RAD_DINO_STD = default_of(DataConfig, "std")


def read_image(ref: Any, arrays: dict | None = None) -> Image.Image:
    """A PIL image from a file path or an ("npz", file, array, index) reference.

    `arrays` is a caller-owned dict that keeps decoded .npz arrays between calls.
    """
    if isinstance(ref, (tuple, list)) and ref and ref[0] == "npz":
        _, file, array, index = ref
        arrays = {} if arrays is None else arrays
        if (file, array) not in arrays:
            with np.load(file, allow_pickle=False) as z:
                arrays[(file, array)] = z[array]
        return Image.fromarray(np.ascontiguousarray(arrays[(file, array)][int(index)]))
    try:
        with Image.open(ref) as im:
            im.load()
            return im
    except (OSError, ValueError) as e:
        raise OSError(f"cannot read image {ref}: {e}") from e


def _to_float(im: Image.Image, channels: int) -> np.ndarray:
    """[H, W, C] float32 in [0, 1] with C = channels (grayscale repeated, palette resolved)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if a.max() > 255 else 255.0
        a = (a / hi)[..., None]
    elif im.mode in ("RGB", "RGBA", "CMYK", "YCbCr") and channels == 3:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    else:
        # 'P' palette PNGs (JSRT) must go through convert('L') to get the right polarity
        a = (np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[..., None]
    if a.shape[-1] != channels:
        a = np.repeat(a, channels, axis=-1) if a.shape[-1] == 1 else a.mean(-1, keepdims=True)
    return a


def resize_crop_box(w: int, h: int, resolution: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """New size after scaling the shorter side to `resolution`, and the centred square crop box."""
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return (nw, nh), (left, top, left + resolution, top + resolution)


def preprocess(im: Image.Image, resolution: int, mean: float = RAD_DINO_MEAN, std: float = RAD_DINO_STD,
               channels: int = 3) -> np.ndarray:
    """RAD-DINO inference preprocessing: [C, resolution, resolution] float32."""
    size, box = resize_crop_box(im.width, im.height, resolution)
    if im.mode == "P":
        im = im.convert("L")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.convert("F")  # PIL resizes 16-bit only as float
        a = np.asarray(im.resize(size, Image.BICUBIC).crop(box), dtype=np.float32)
        a = np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0, 1)[..., None]
        a = np.repeat(a, channels, axis=-1)
    else:
        a = _to_float(im.resize(size, Image.BICUBIC).crop(box), channels)
    a = (a - mean) / std
    return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)


def preprocess_mask(im: Image.Image, resolution: int, out_size: int) -> np.ndarray:
    """A binary mask with the image's geometry (resize shorter side, centre crop), then `out_size`."""
    size, box = resize_crop_box(im.width, im.height, resolution)
    m = im.convert("L").resize(size, Image.NEAREST).crop(box)
    if out_size != resolution:
        # area-average then threshold: a fair downsampling of a thin structure (clavicles)
        m = m.resize((out_size, out_size), Image.BILINEAR)
    return np.asarray(m) >= 64


def _png_bytes(im: Image.Image) -> bytes:
    """Array-held images (.npz) as PNG bytes for loaders that decode files."""
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- cache
def model_fingerprint(state_dict: dict, extra: str = "") -> str:
    """sha256 over parameter names, shapes and bytes: the same weights give the same cache."""
    import torch

    h = hashlib.sha256(extra.encode())
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class FeatureCache:
    """Per-sample feature files for one model and preprocessing; `root=None` disables caching."""

    def __init__(self, root: str | Path | None, model_hash: str, resolution: int, loader: str = "plain"):
        # the loader is part of the key: DALI's and PIL's bicubic differ slightly, never mix them
        suffix = "" if loader == "plain" else f"-{loader}"
        self.dir = Path(root) / f"{model_hash}-r{resolution}{suffix}" if root else None

    def path(self, key: str) -> Path | None:
        if self.dir is None:
            return None
        return self.dir / f"{hashlib.sha1(key.encode()).hexdigest()[:24]}.safetensors"

    def get(self, key: str, need_patch: bool) -> dict[str, np.ndarray] | None:
        from safetensors.numpy import load_file

        p = self.path(key)
        if p is None or not p.is_file():
            return None
        try:
            d = load_file(str(p))
        except Exception:  # a truncated file from a killed run: extract again
            return None
        if need_patch and "patch" not in d:
            return None
        return d

    def put(self, key: str, feats: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save_file

        p = self.path(key)
        if p is None:
            return
        from dinotrain.atomic import atomic_path

        with atomic_path(p) as tmp:  # unique temporary name: parallel evals may share a cache
            save_file({k: np.ascontiguousarray(v) for k, v in feats.items()}, str(tmp))


# ----------------------------------------------------------------------------- extraction
def extract_features(
    forward: Callable[[Any], dict],
    keys: Sequence[str],
    images: Sequence[Any],
    *,
    resolution: int,
    patch_size: int,
    cache: FeatureCache,
    need_patch: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
    mean: float = RAD_DINO_MEAN,
    std: float = RAD_DINO_STD,
    channels: int = 3,
    progress: bool = True,
    desc: str = "features",
    loader: str = "plain",
) -> dict[str, np.ndarray]:
    """CLS features [N, D] (and patch tokens [N, h, w, D] when `need_patch`) for every sample.

    `forward(x)` is the model's `forward_features` returning `x_norm_clstoken` and
    `x_norm_patchtokens`. Samples already in `cache` are not recomputed. `loader`: "plain"
    (PIL + numpy, this module) or "dali" (`dinotrain.data.build_eval_loader`, same recipe;
    on the GPU when extracting on CUDA).
    """
    if loader not in ("plain", "dali"):
        raise ValueError(f"loader '{loader}': use 'plain' (PIL + numpy) or 'dali'")
    import torch
    from tqdm import tqdm

    grid = resolution // patch_size
    out_cls, out_patch, todo = _from_cache(keys, cache, need_patch)
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo, leave=False)

    def consume(idx: list[int], x) -> None:
        with torch.inference_mode():
            out = forward(x.to(device))
        cls = out["x_norm_clstoken"].float().cpu().numpy()
        patch = out["x_norm_patchtokens"].float().cpu().numpy()
        if patch.shape[1] != grid * grid:
            raise ValueError(f"model gave {patch.shape[1]} patch tokens at resolution {resolution}; expected "
                             f"{grid * grid} (= ({resolution}//{patch_size})^2): is the patch size right?")
        patch = patch.reshape(len(idx), grid, grid, -1).astype(np.float16)
        for j, i in enumerate(idx):
            out_cls[i] = cls[j]
            out_patch[i] = patch[j]
            # patch tokens are large (2 MB per image for ViT-B at 518): stored only when asked for
            cache.put(keys[i], {"cls": cls[j], "patch": patch[j]} if need_patch else {"cls": cls[j]})
        bar.update(len(idx))

    recipe = {"resolution": resolution, "mean": mean, "std": std, "channels": channels, "batch_size": batch_size}
    for idx, x in _input_batches(images, todo, recipe, loader, device):
        consume(idx, x)
    bar.close()
    result = {"cls": np.stack(out_cls).astype(np.float32)}
    if need_patch:
        result["patch"] = np.stack(out_patch)
    return result


def _from_cache(keys: Sequence[str], cache: FeatureCache, need_patch: bool) -> tuple[list, list, list[int]]:
    """The cached CLS (and patch) features per key, None where missing, and the missing indices."""
    out_cls: list[np.ndarray | None] = [None] * len(keys)
    out_patch: list[np.ndarray | None] = [None] * len(keys)
    todo = []
    for i, k in enumerate(keys):
        hit = cache.get(k, need_patch)
        if hit is None:
            todo.append(i)
        else:
            out_cls[i] = hit["cls"]
            if need_patch:
                out_patch[i] = hit["patch"]
    return out_cls, out_patch, todo


def _input_batches(images: Sequence[Any], todo: list[int], recipe: dict, loader: str, device: str):
    """(indices, preprocessed batch [B, C, R, R]) for the images at `todo`, through the DALI eval
    loader or PIL + numpy (same recipe: resolution, mean, std, channels, batch_size)."""
    import torch

    arrays: dict = {}
    if todo and loader == "dali":
        from dinotrain.data.eval_loader import build_eval_loader

        items = [images[i] if isinstance(images[i], str) else _png_bytes(read_image(images[i], arrays))
                 for i in todo]
        for batch in build_eval_loader(items, **recipe, device="gpu" if str(device).startswith("cuda") else "cpu"):
            yield [todo[j] for j in batch["index"]], batch["images"]
        return
    size = recipe["batch_size"]
    for start in range(0, len(todo), size):
        idx = todo[start:start + size]
        x = np.stack([preprocess(read_image(images[i], arrays), recipe["resolution"], recipe["mean"], recipe["std"],
                                 recipe["channels"]) for i in idx])
        yield idx, torch.from_numpy(x)
