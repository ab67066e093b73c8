"""Pillow decoding for the torch loader backend, run in worker processes.

This module imports only numpy and Pillow, so a worker process starts in a fraction of a second
and never touches torch (its threads and CUDA context stay in the training process).
"""

from __future__ import annotations

import io

import numpy as np


def decode_image(data: bytes, gray: bool) -> np.ndarray:
    """Encoded bytes -> uint8 or uint16 pixels: [H, W] when `gray`, else [H, W, 3].

    Bit depth is kept (16-bit PNG and JPEG 2000 stay uint16), as DALI's decoder keeps it; colour
    images asked for in gray use Pillow's ITU-R 601 luma, the weights DALI's GRAY output uses too.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("I;16", "I;16B", "I;16L"):
            a = np.asarray(im).astype(np.uint16, copy=False)
            return a if gray else np.repeat(a[..., None], 3, axis=2)
        if im.mode in ("I", "F"):
            a = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
            return a if gray else np.repeat(a[..., None], 3, axis=2)
        return np.asarray(im.convert("L" if gray else "RGB"))


def decode_many(items: list[bytes], gray: bool) -> list[np.ndarray]:
    """A worker's share of a batch (one task per share, so a batch costs a few round trips)."""
    return [decode_image(b, gray) for b in items]
