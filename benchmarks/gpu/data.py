"""The GPU check's inputs: the same images as a PNG and a J2K shard set, and their encoded bytes."""

from __future__ import annotations

from pathlib import Path

from shards.codecs import CODECS


def make_pngs(folder: Path, n: int, size: int = 518) -> list[str]:
    """Smooth random 8-bit grayscale images: a stand-in where no real images are on the machine."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size + 37 * (i % 3)), Image.BICUBIC)  # a few aspect ratios
        p = folder / f"img{i:04d}.png"
        img.save(p)
        paths.append(str(p))
    return paths


def input_files(data: Path | None, work: Path, n: int) -> tuple[list[str], str | None, str]:
    """(files, metadata csv or None, where they came from): real images under DATA/images, else generated."""
    if data is not None and (data / "images").is_dir():
        files = sorted(str(p) for p in (data / "images").iterdir())[:n]
        meta = str(data / "metadata.csv") if (data / "metadata.csv").is_file() else None
        return files, meta, f"{len(files)} real images from {data}"
    return make_pngs(work / "pngs", n), None, f"{n} generated grayscale PNGs (no images under --data)"


def build_sets(files: list[str], metadata: str | None, work: Path, size: int = 518, bits: int | None = None,
               workers: int = 4, per_shard: int = 64) -> dict[str, tuple[Path, float]]:
    """{codec: (shard folder, build seconds)} for every codec, from the same files and options."""
    import time

    from shards.build import build_shards

    out = {}
    for codec in CODECS:
        t0 = time.perf_counter()
        folder = work / f"shards_{codec}"
        build_shards(files, str(folder), name=f"check{codec}", size=size, bits=bits, workers=workers,
                     metadata=metadata, modality="CR", samples_per_shard=per_shard, codec=codec, progress=False)
        out[codec] = (folder, time.perf_counter() - t0)
    return out


def encoded_samples(folder: Path, n: int) -> list[bytes]:
    """The first `n` encoded images of a shard set's train split, read as the loader reads them."""
    from dinotrain.data.shard_index import ShardReader, index_source

    refs = index_source(str(folder), "train")[:n]
    reader = ShardReader()
    try:
        return reader.read_many([(r.shard, r.image_offset, r.image_size) for r in refs])
    finally:
        reader.close()
