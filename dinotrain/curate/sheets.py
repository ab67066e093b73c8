"""Contact sheets: rows of thumbnails so a person can check by eye what curation removed or drew."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

THUMB = 96
KEPT, DROPPED, PLAIN = (40, 160, 60), (200, 40, 40), (90, 90, 90)


def _tile(data: bytes, caption: str, colour: tuple[int, int, int]):
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (THUMB + 6, THUMB + 20), (255, 255, 255))
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L").convert("RGB")
            im.thumbnail((THUMB, THUMB))
    except OSError:
        im = Image.new("RGB", (THUMB, THUMB), (0, 0, 0))
    ImageDraw.Draw(tile).rectangle([0, 0, THUMB + 5, THUMB + 5], fill=colour)
    tile.paste(im, (3 + (THUMB - im.width) // 2, 3 + (THUMB - im.height) // 2))
    ImageDraw.Draw(tile).text((3, THUMB + 7), caption[:17], fill=(0, 0, 0))
    return tile


def contact_sheet(rows: list[tuple[str, list[tuple[bytes, str, tuple[int, int, int]]]]], path: Path,
                  per_row: int = 10) -> Path:
    """One PNG: per row a title and up to `per_row` tiles (image bytes, caption, border colour)."""
    from PIL import Image, ImageDraw

    w = 8 + per_row * (THUMB + 10)
    h_row = THUMB + 20 + 22
    sheet = Image.new("RGB", (w, max(1, len(rows)) * h_row + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (title, tiles) in enumerate(rows):
        y = 4 + r * h_row
        draw.text((8, y), title[:160], fill=(0, 0, 0))
        for c, (data, caption, colour) in enumerate(tiles[:per_row]):
            sheet.paste(_tile(data, caption, colour), (8 + c * (THUMB + 10), y + 16))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def read_samples(wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str], bytes]:
    """Image bytes of (root, shard manifest path, key) samples: one ranged read each."""
    import fsspec

    from dinotrain.data.shard_index import ShardReader, _join, parse_idx

    reader, out, refs_of = ShardReader(), {}, {}
    try:
        for root, shard, key in wanted:
            tar = _join(root, shard)
            if tar not in refs_of:
                idx = tar.removesuffix(".tar") + ".idx"
                with fsspec.open(idx, "rt") as f:
                    refs_of[tar] = {r.key: r for r in parse_idx(f.read(), tar)}
            r = refs_of[tar][key]
            out[(tar, key)] = reader.read(tar, r.image_offset, r.image_size)
    finally:
        reader.close()
    return out


def spread_pick(members: np.ndarray, n: int) -> np.ndarray:
    """n members spread over the list (a fixed, readable sample of a cluster)."""
    if len(members) <= n:
        return members
    return members[np.linspace(0, len(members) - 1, n).round().astype(int)]
