"""Eval preprocessing (RAD-DINO: shorter side 518 bicubic, centre crop, normalise) on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinotrain.data import build_eval_loader

MEAN, STD = 0.5307, 0.2583


def reference(img: Image.Image, res: int) -> np.ndarray:
    """PIL bicubic resize of the shorter side, centre crop, [0, 1]: what the HF processor does."""
    arr = np.asarray(img).astype(np.float32)
    arr /= 65535.0 if img.mode.startswith("I") else 255.0
    h, w = arr.shape[:2]
    s = res / min(h, w)
    nh, nw = max(res, round(h * s)), max(res, round(w * s))
    chans = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[2])]
    out = np.stack([np.asarray(Image.fromarray(c, mode="F").resize((nw, nh), Image.BICUBIC)) for c in chans])
    top, left = (nh - res) // 2, (nw - res) // 2
    return np.clip(out[:, top : top + res, left : left + res], 0, 1)


def test_eval_preprocessing_matches_a_pil_reference(test_data, tmp_path):
    cxr = sorted((test_data / "jsrt" / "images").glob("*.png"))[:2]
    derm = sorted((test_data / "ham10000_derm" / "images").glob("*.jpg"))[:1]
    covid = sorted((test_data / "covid_cxr" / "images").glob("*.jp*g"))[:1]  # non-square JPEG
    # a 16-bit PNG of the first radiograph: same picture, same output
    a16 = (np.asarray(Image.open(cxr[0]).convert("L")).astype(np.uint16) * 257)
    p16 = tmp_path / "cxr16.png"
    Image.fromarray(a16).save(p16)
    items = [*cxr, *derm, *covid, p16, (test_data / "busi_ultrasound" / "images").glob("*.png").__next__().read_bytes()]
    batches = list(build_eval_loader(items, resolution=112, batch_size=4, device="cpu"))
    assert [b["index"] for b in batches] == [[0, 1, 2, 3], [4, 5]]
    x = torch.cat([b["images"] for b in batches])
    assert x.shape == (6, 3, 112, 112) and x.dtype == torch.float32
    for i, item in enumerate(items[:5]):
        img = Image.open(item)
        img = img.convert("L") if img.mode == "P" else img
        want = reference(img if img.mode != "RGB" else img, 112)
        got = x[i].numpy() * STD + MEAN
        if want.shape[0] == 1:
            assert torch.equal(x[i, 0], x[i, 1]) and torch.equal(x[i, 0], x[i, 2])  # gray repeated
            got = got[:1]
        assert np.abs(got - want).mean() < 0.01, f"item {i} ({item}) differs from the PIL reference"
    assert torch.allclose(x[4], x[0], atol=2e-3)  # 16-bit and 8-bit versions agree
    assert not torch.equal(x[2, 0], x[2, 1])  # the dermoscopy image keeps its colour
    again = torch.cat([b["images"] for b in build_eval_loader(items, resolution=112, batch_size=4, device="cpu")])
    assert torch.equal(x, again)  # deterministic


def test_single_channel_output_and_bad_path(test_data, tmp_path):
    p = sorted((test_data / "jsrt" / "images").glob("*.png"))[0]
    (b,) = list(build_eval_loader([p], resolution=56, channels=1, batch_size=2, device="cpu"))
    assert b["images"].shape == (1, 1, 56, 56)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        list(build_eval_loader([tmp_path / "nope.png"], resolution=56, device="cpu"))
    with pytest.raises(ValueError, match="channels"):
        build_eval_loader([p], channels=2)
