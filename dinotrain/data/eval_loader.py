"""Deterministic RAD-DINO preprocessing for feature extraction.

    for batch in build_eval_loader(paths, resolution=518, batch_size=32):
        feats = model(batch["images"])      # [b, C, 518, 518] float32, normalised
        batch["index"]                      # positions in `paths` of these rows

Resize the shorter side to `resolution` (bicubic), centre crop `resolution` square, scale to
[0, 1] (8- or 16-bit alike), normalise with mean/std (default: the schema's data.mean/std, RAD-DINO's), repeat a
grayscale channel when `channels=3`. Items are file paths (PNG 8/16-bit, JPEG) or encoded
bytes. The last batch may be shorter. Runs on the GPU when CUDA is available (as training).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dinotrain.config import DataConfig, default_of
from dinotrain.data.loader import GRAY_MODES
from dinotrain.data.pipeline import GraphSpec, eval_pipeline, resolve_device

_MEAN, _STD = default_of(DataConfig, "mean"), default_of(DataConfig, "std")


def _encoded(item) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    path = Path(item)
    try:
        return path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"eval image {path}: cannot read ({e})") from e


def _header(data: bytes) -> tuple[bool, int, int]:
    """(grayscale?, height, width) from the image header."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.mode in GRAY_MODES, im.size[1], im.size[0]


def centre_crop_pos(height: int, width: int, res: int) -> np.ndarray:
    """Relative (y, x) crop positions giving the integer offsets floor((side - res) / 2) after the
    shorter side is resized to `res` (Hugging Face's centre crop, which RAD-DINO used; DALI's
    own 0.5 would round half-pixels up)."""
    s = res / min(height, width)
    pos = []
    for side in (height, width):
        n = max(res, int(round(side * s)))
        pos.append(((n - res) // 2) / (n - res) if n > res else 0.5)
    return np.array(pos, dtype=np.float32)


class EvalLoader:
    """Iterator of {"images": tensor [b, C, R, R], "index": list[int]} over `items`, in order."""

    def __init__(self, items: Sequence, resolution: int = 518, mean: float = _MEAN, std: float = _STD,
                 channels: int = 3, batch_size: int = 32, num_threads: int = 2, device: str = "auto"):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.items = list(items)
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.device, self.device_id = resolve_device(device)
        self.channels = channels
        self.mean, self.std = float(mean), float(std)
        self.num_threads = num_threads
        self._pipes: dict = {}
        self._feed: dict = {}

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def _run(self, encoded: list[bytes], gray: bool):
        """One batch through the (cached) graph for this colour mode; batches may be short."""
        from dinotrain.data.loader import _stack_crops

        heads = [_header(b) for b in encoded]
        self._feed[gray] = ([np.frombuffer(b, dtype=np.uint8) for b in encoded],
                            [centre_crop_pos(h, w, self.resolution) for _, h, w in heads])
        if gray not in self._pipes:
            g = GraphSpec(self.resolution, self.resolution, self.channels, gray, self.mean, self.std)
            self._pipes[gray] = eval_pipeline(lambda: self._feed[gray], self.resolution, g, self.batch_size,
                                              self.num_threads, self.device, self.device_id)
        (out,) = self._pipes[gray].run()
        return _stack_crops([out], self.device, self.device_id)

    def __iter__(self) -> Iterator[dict]:
        import torch

        for start in range(0, len(self.items), self.batch_size):
            idx = list(range(start, min(start + self.batch_size, len(self.items))))
            encoded = [_encoded(self.items[i]) for i in idx]
            gray = [self.channels == 1 or _header(b)[0] for b in encoded]
            # grayscale and colour images take separate graphs (decode to 1 or 3 channels)
            images = None
            for flag in (True, False):
                sel = [k for k, g in enumerate(gray) if g == flag]
                if not sel:
                    continue
                part = self._run([encoded[k] for k in sel], flag)
                if images is None:
                    images = torch.empty((len(idx), *part.shape[1:]), dtype=part.dtype, device=part.device)
                images[sel] = part
            yield {"images": images, "index": idx}


def build_eval_loader(items: Sequence, resolution: int = 518, mean: float = _MEAN, std: float = _STD,
                      channels: int = 3, batch_size: int = 32, num_threads: int = 2,
                      device: str = "auto") -> EvalLoader:
    """Deterministic RAD-DINO eval preprocessing over image paths or encoded bytes (see module doc)."""
    return EvalLoader(items, resolution, mean, std, channels, batch_size, num_threads, device)
