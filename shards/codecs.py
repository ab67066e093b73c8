"""Image codecs of a shard sample: PNG (the default) and lossless JPEG 2000.

Both are lossless for 8- and 16-bit grayscale and 8-bit RGB, so a sample's pixels (and the
sha256 in its json) do not depend on the codec. They differ in where they decode: DALI's
`mixed` decoder runs JPEG 2000 on the GPU (nvJPEG2000) but PNG on the CPU, so J2K shards
free the loader's CPU cores on a GPU node at the price of a slower encode when building
(figures: benchmarks/shards_build.py, benchmarks/gpu_check.py; advice: README).

J2K samples are JP2 files (member `KEY.jp2`): the codestream plus ~85 bytes of boxes whose
colour-space entry spares DALI's CPU decoder (OpenCV) a warning per image that a raw
codestream draws. They are written with the reversible 5/3 wavelet and no quality layers,
which is OpenJPEG's lossless mode. Encoding is a pure function of the pixels,
so builds stay byte-identical for any number of workers.
"""

from __future__ import annotations

import io

import numpy as np

# codec name (shards build --codec, manifest "codec", sample json "codec") -> tar member extension
EXTENSIONS = {"png": "png", "j2k": "jp2"}
CODECS = tuple(EXTENSIONS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
J2K_SIGNATURE = b"\xff\x4f\xff\x51"  # SOC then SIZ marker: a JPEG 2000 codestream
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JP2 file format's first box


def extension(codec: str) -> str:
    """The tar member extension of `codec` ('png', 'jp2'); ValueError names the choices."""
    try:
        return EXTENSIONS[codec]
    except KeyError:
        raise ValueError(f"codec {codec!r}: allowed values are {', '.join(CODECS)}") from None


def codec_of(data: bytes) -> str | None:
    """'png' or 'j2k' from the first bytes, None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(J2K_SIGNATURE) or data.startswith(JP2_SIGNATURE):
        return "j2k"
    return None


def encode(a: np.ndarray, codec: str, compress_level: int = 6) -> bytes:
    """uint8/uint16 gray (H, W) or RGB (H, W, 3) -> encoded bytes; `compress_level` is PNG's zlib level."""
    if codec == "png":
        from shards.process import encode_png

        return encode_png(a, compress_level)
    if codec == "j2k":
        return encode_j2k(a)
    extension(codec)  # raises with the allowed values
    raise AssertionError("unreachable")


def encode_j2k(a: np.ndarray) -> bytes:
    from PIL import Image

    if a.dtype == np.uint16 and a.ndim == 3:
        # Pillow has no 16-bit RGB image mode to hand to OpenJPEG
        raise ValueError("16-bit colour cannot be written as J2K: use --codec png, or --bits 8")
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"J2K encode: expected uint8 or uint16 pixels, got {a.dtype}")
    im = Image.fromarray(np.ascontiguousarray(a))
    buf = io.BytesIO()
    # irreversible=False: the integer 5/3 wavelet; no quality_layers: every bit plane kept
    im.save(buf, format="JPEG2000", irreversible=False)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Encoded sample bytes (any codec, told by the signature) -> uint8/uint16 array as stored."""
    kind = codec_of(data)
    if kind == "png":
        from shards.process import decode_png_any

        return decode_png_any(data)
    if kind == "j2k":
        return decode_j2k(data)
    raise ValueError(f"neither PNG nor JPEG 2000 (first bytes {data[:8].hex()})")


def decode_j2k(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("L", "RGB"):
            return np.asarray(im)
        if im.mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16)
        raise ValueError(f"unexpected J2K image mode {im.mode}")
