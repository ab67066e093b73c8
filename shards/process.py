"""Pixels -> stored image: channel handling, window to [0, 1], resize, quantise to 8/16 bits, PNG codec.

Pure functions of their inputs (no global state), so every worker produces the same bytes for
the same frame whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from shards.readers import Frame

RESAMPLE = ("bicubic", "lanczos", "bspline")


@dataclass(frozen=True)
class ProcessOptions:
    size: int = 518  # shorter side after resize (RAD-DINO)
    resample: str = "bicubic"
    upscale: bool = False
    bits: int | None = None  # None: 16 for sources deeper than 8 bits, else 8
    channels: int = 1  # 1 = grayscale; 3 keeps RGB sources in colour
    compress_level: int = 6  # PNG's zlib level (no effect on J2K)
    codec: str = "png"  # shards.codecs: png | j2k (lossless JPEG 2000, decoded on the GPU by DALI)


def target_shape(h: int, w: int, size: int, upscale: bool) -> tuple[int, int]:
    """Shape with the shorter side equal to `size` (aspect kept), unless that would upscale."""
    short = min(h, w)
    if short == size or (short < size and not upscale) or size <= 0:
        return h, w
    scale = size / short
    if h <= w:
        return size, max(1, int(round(w * scale)))
    return max(1, int(round(h * scale))), size


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma (what PIL's convert('L') computes), in float."""
    # in place, channel by channel: the same operations in the same order (bit-identical) as
    # r * 0.299 + g * 0.587 + b * 0.114 in float64, without a float64 copy of all three channels
    out = np.multiply(rgb[..., 0], 0.299, dtype=np.float64)
    tmp = np.empty_like(out)
    for c, w in ((1, 0.587), (2, 0.114)):
        np.multiply(rgb[..., c], w, out=tmp, dtype=np.float64)
        out += tmp
    return out


def _resize_plane(plane: np.ndarray, shape: tuple[int, int], resample: str) -> np.ndarray:
    if plane.shape == shape:
        return plane
    if resample == "bspline":
        from scipy import ndimage

        zoom = (shape[0] / plane.shape[0], shape[1] / plane.shape[1])
        return ndimage.zoom(plane, zoom, order=3, mode="grid-mirror", grid_mode=True).astype(np.float32)
    from PIL import Image

    method = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[resample]
    im = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(im.resize((shape[1], shape[0]), method), dtype=np.float32)


def render(frame: Frame, opts: ProcessOptions, bits: int) -> np.ndarray:
    """Frame -> uint8/uint16 array (H, W) or (H, W, 3) windowed, inverted if needed, resized."""
    a = frame.pixels
    if a.ndim == 3 and opts.channels == 1:
        a = luma(a)
    maxv = float(2**bits - 1)
    span = frame.hi - frame.lo
    # float64 so that a native 16-bit frame maps back onto the same integers (bit-exact round trip)
    if span > 0:
        x = a.astype(np.float64)  # then in place: one float64 image in memory, not three
        x -= frame.lo
        x *= maxv / span
    else:
        x = np.zeros(a.shape, np.float64)
    np.clip(x, 0.0, maxv, out=x)
    shape = target_shape(x.shape[0], x.shape[1], opts.size, opts.upscale)
    if shape != x.shape[:2]:
        planes = [x] if x.ndim == 2 else [x[..., c] for c in range(x.shape[2])]
        out = [_resize_plane(p.astype(np.float32), shape, opts.resample) for p in planes]
        x = (out[0] if len(out) == 1 else np.stack(out, axis=-1)).astype(np.float64)
        np.clip(x, 0.0, maxv, out=x)
    out = np.rint(x).astype(np.uint16 if bits == 16 else np.uint8)
    if frame.invert:
        # on integers, after resampling (which commutes with it): MONOCHROME1 is exactly max - value
        out = np.asarray(int(maxv), out.dtype) - out
    return out


def pixel_sha256(a: np.ndarray) -> str:
    """sha256 of the C-ordered little-endian pixel bytes (what `verify` recomputes from the PNG)."""
    a = np.ascontiguousarray(a)
    if a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(a.tobytes()).hexdigest()


def encode_png(a: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode uint8/uint16 gray or RGB as PNG; 16-bit RGB (PIL cannot write it) by hand."""
    if a.dtype == np.uint16 and a.ndim == 3:
        return _png_by_hand(a, compress_level)
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(a))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _png_by_hand(a: np.ndarray, level: int) -> bytes:
    h, w = a.shape[:2]
    color = 2 if a.ndim == 3 else 0
    depth = 16 if a.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(a.astype(a.dtype.newbyteorder(">"))).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, level)) + chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8/uint16 array as stored (used by verify and tests)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if im.mode == "RGB" or im.mode == "L":
        return np.asarray(im)
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if im.mode == "I":
        return np.asarray(im).astype(np.uint16)
    if im.mode in ("RGBA", "LA", "P"):
        return np.asarray(im.convert("RGB" if im.mode != "LA" else "L"))
    raise ValueError(f"unexpected PNG mode {im.mode}")


def decode_png_any(data: bytes) -> np.ndarray:
    """Like decode_png, also reading 16-bit RGB (which PIL opens as 8-bit) through zlib."""
    if data[24] == 16 and data[25] == 2:
        w, h = struct.unpack(">II", data[16:24])
        idat, pos = b"", 8
        while pos < len(data):
            (n,) = struct.unpack(">I", data[pos : pos + 4])
            tag = data[pos + 4 : pos + 8]
            if tag == b"IDAT":
                idat += data[pos + 8 : pos + 8 + n]
            pos += 12 + n
        raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 6)
        if (raw[:, 0] != 0).any():
            raise ValueError("16-bit RGB PNG with row filters: only filter 0 (as written by shards) is read")
        return raw[:, 1:].copy().view(">u2").reshape(h, w, 3).astype(np.uint16)
    return decode_png(data)
