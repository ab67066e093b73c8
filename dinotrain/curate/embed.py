"""Embeddings of every sample of a shard set, cached per shard and resumable.

Encoders:
- `pixels`: per image, three grayscale thumbnails (16 x 16, box filter) of the centred square
  at 80 %, 76 % and 72 % of the shorter side, each minus its mean and L2-normalised. Similarity
  of two images is the best cosine over the 3 x 3 pairs of views, which makes a copy cropped by a
  few percent per side match its original (one of its zooms lines up), while the border
  (burned-in text, calipers) never counts. Measured on real data in BENCHMARKS.md / README.
- anything `dinotrain eval` accepts as a MODEL (a run folder, an export, a Hugging Face Dinov2
  folder, a checkpoint, `random:ARCH`): its normalised CLS token at `resolution`, through
  `dinotrain.eval.features.extract_features` (the RAD-DINO inference preprocessing).

Cache: `<cache>/embeddings/<encoder id>/<shard stem>-<sha256[:12] of the shard>.npz` holding
`keys`, `sources` (the input file each sample came from) and `vectors` [n, views, dim] float32.
The shard's checksum from the manifest is in the name, so a rebuilt shard is embedded again and
a killed run resumes at the first shard without a file (each file is written atomically).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from dinotrain.data.shard_index import DataError, _join, parse_idx, read_manifest

PIXEL_GRID = 16
PIXEL_ZOOMS = (0.80, 0.76, 0.72)


@dataclass(frozen=True)
class Shard:
    rel: str  # path inside the shard set, as the manifest names it
    url: str  # full path or URL of the .tar
    index: str  # full path or URL of the .idx
    sha256: str


@dataclass
class Embedded:
    """One shard set's samples in manifest order, with their embeddings."""

    root: str
    name: str
    shard: list[str]  # per sample: the shard's manifest path
    keys: list[str]
    sources: list[str]
    vectors: np.ndarray  # [n, views, dim] float32, each view L2-normalised


def shards_of(root: str) -> tuple[str, list[Shard]]:
    """(set name, every shard of every split) of a `shards build` output folder."""
    manifest = read_manifest(root)
    out = []
    for s in manifest["shards"]:
        url = _join(root, s["path"])
        idx = _join(root, s["index"]) if s.get("index") else url.removesuffix(".tar") + ".idx"
        out.append(Shard(s["path"], url, idx, str(s.get("sha256") or "")))
    return str(manifest.get("name") or Path(root.rstrip("/")).name), out


# ----------------------------------------------------------------------------- encoders
def pixel_views(im) -> np.ndarray:
    """[views, PIXEL_GRID**2] unit vectors of one PIL image (see the module docstring)."""
    from PIL import Image

    g = im.convert("L")
    w, h = g.size
    out = []
    for z in PIXEL_ZOOMS:
        m = max(1, int(min(w, h) * z))
        left, top = (w - m) // 2, (h - m) // 2
        a = np.asarray(g.crop((left, top, left + m, top + m)).resize((PIXEL_GRID, PIXEL_GRID), Image.BOX),
                       dtype=np.float32).ravel()
        a = a - a.mean()
        n = float(np.linalg.norm(a))
        out.append(a / n if n > 1e-6 else a)  # a flat image stays the zero vector: similar to nothing
    return np.stack(out)


class PixelEncoder:
    id = f"pixels-g{PIXEL_GRID}-z{'-'.join(f'{z:.2f}' for z in PIXEL_ZOOMS)}"

    def __init__(self, threads: int = 2):
        self.threads = threads

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        from dinotrain.eval.features import read_image

        with ThreadPoolExecutor(self.threads) as pool:  # PIL decodes and resizes without the GIL
            return np.stack(list(pool.map(lambda ref: pixel_views(read_image(ref)), images)))


class ModelEncoder:
    """A backbone's normalised CLS token, via the eval feature extraction."""

    def __init__(self, spec: str, resolution: int, batch_size: int = 32, device: str = "cpu", threads: int = 2):
        import torch

        from dinotrain.eval.loading import load_model

        if device == "cpu":
            torch.set_num_threads(threads)
        self.model = load_model(spec, device)
        self.resolution, self.batch_size, self.device = int(resolution), int(batch_size), device
        self.id = f"{self.model.fingerprint}-r{self.resolution}"

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        from dinotrain.eval.features import FeatureCache, extract_features

        m = self.model
        out = extract_features(m.model.forward_features, [str(i) for i in range(len(images))], images,
                               resolution=self.resolution, patch_size=m.patch_size,
                               cache=FeatureCache(None, m.fingerprint, self.resolution), batch_size=self.batch_size,
                               device=self.device, mean=m.mean, std=m.std, channels=m.in_chans, progress=False)
        v = out["cls"][:, None, :]
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def make_encoder(spec: str, resolution: int, threads: int, device: str = "cpu", batch_size: int = 32):
    if spec == "pixels":
        return PixelEncoder(threads)
    return ModelEncoder(spec, resolution, batch_size, device, threads)


# ----------------------------------------------------------------------------- shards
def read_shard(shard: Shard) -> tuple[list[str], list[str], list[io.BytesIO]]:
    """(keys, source files, image bytes) of one shard: one sequential read of the tar."""
    try:
        with fsspec.open(shard.index, "rt") as f:
            refs = parse_idx(f.read(), shard.url)
        with fsspec.open(shard.url, "rb") as f:
            blob = f.read()
    except FileNotFoundError as e:
        raise DataError(f"shard {shard.url}: {e.filename or 'file'} is missing; rebuild the shard set") from None
    except OSError as e:
        raise DataError(f"shard {shard.url}: cannot read ({e}); check the path and credentials") from e
    keys, sources, images = [], [], []
    for r in refs:
        keys.append(r.key)
        images.append(io.BytesIO(blob[r.image_offset:r.image_offset + r.image_size]))
        meta = {}
        if r.meta_offset >= 0:
            try:
                meta = json.loads(blob[r.meta_offset:r.meta_offset + r.meta_size])
            except ValueError:
                meta = {}
        sources.append(str(meta.get("source") or ""))
    return keys, sources, images


def cache_file(cache: str, encoder_id: str, shard: Shard) -> str:
    stem = Path(shard.rel).name.removesuffix(".tar")
    return _join(cache, f"embeddings/{encoder_id}/{stem}-{shard.sha256[:12] or 'nosum'}.npz")


def _load(path: str):
    try:
        with fsspec.open(path, "rb") as f:
            z = np.load(io.BytesIO(f.read()), allow_pickle=False)
            return [str(k) for k in z["keys"]], [str(s) for s in z["sources"]], z["vectors"].astype(np.float32)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile):
        return None  # absent, or cut short by a killed run: embed again


def _save(path: str, keys: list[str], sources: list[str], vectors: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, keys=np.array(keys, dtype=str), sources=np.array(sources, dtype=str), vectors=vectors)
    fs, p = fsspec.core.url_to_fs(path)
    fs.makedirs(str(Path(p).parent), exist_ok=True)
    tmp = f"{p}.tmp-{id(buf)}"
    fs.pipe_file(tmp, buf.getvalue())
    fs.mv(tmp, p)  # a reader never sees half a file


def embed_shard(shard: Shard, encoder, cache: str) -> tuple[str, tuple | None]:
    """(cache file, (keys, sources, vectors) when it had to be computed, else None)."""
    path = cache_file(cache, encoder.id, shard)
    if _load(path) is not None:
        return path, None
    keys, sources, images = read_shard(shard)
    vectors = encoder.embed(images).astype(np.float32)
    _save(path, keys, sources, vectors)
    return path, (keys, sources, vectors)


def embed_set(root: str, encoder, cache: str, log: Callable[[str], None] = print) -> Embedded:
    """Every sample of the shard set at `root`, embedded (cached shards are read, not recomputed)."""
    name, shards = shards_of(root)
    parts = []
    for i, shard in enumerate(shards):
        path = cache_file(cache, encoder.id, shard)
        hit = _load(path)
        if hit is None:
            path, hit = embed_shard(shard, encoder, cache)
            log(f"embedded {name} shard {i + 1}/{len(shards)} ({len(hit[0])} samples) -> {path}")
        parts.append((shard.rel, *hit))
    if not parts or not sum(len(p[1]) for p in parts):
        raise DataError(f"{root}: the shard set holds no samples; build it with `dinotrain shards build`")
    return Embedded(root, name, [p[0] for p in parts for _ in p[1]], [k for p in parts for k in p[1]],
                    [s for p in parts for s in p[2]], np.concatenate([p[3] for p in parts]))
