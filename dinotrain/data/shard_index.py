"""Where each sample's bytes are: the shard manifest plus DALI's `.idx` files, local or s3://.

The `.idx` format (DALI's `wds2idx`, "v1.2 <n>" header) lists, per sample, each component's
extension, data offset, size and member name. Reading a sample is then one ranged read per
component, so the loader can pick any subset in any order (mixtures, nested subsets, exact
resume), which `fn.readers.webdataset` cannot.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import fsspec

from dinotrain.errors import UserError

# image members a sample may hold (first found wins); jp2: `shards build --codec j2k` (decoded on the GPU)
IMAGE_EXTS = ("png", "jp2", "j2k", "jpg", "jpeg")


class DataError(UserError, RuntimeError):
    """Bad or unreadable training data: the message names the shard/sample and the fix."""


@dataclass(frozen=True)
class SampleRef:
    shard: str  # full path or URL of the .tar
    key: str
    image_ext: str
    image_offset: int
    image_size: int
    meta_offset: int  # -1 when the sample has no json
    meta_size: int


def _join(root: str, path: str) -> str:
    if "://" in path or path.startswith("/"):
        return path
    return root.rstrip("/") + "/" + path


def read_manifest(root: str) -> dict:
    url = _join(root, "manifest.json")
    try:
        with fsspec.open(url, "rt") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataError(
            f"{url}: no manifest.json: point data.sources[].path at the output folder of `dinotrain shards build`"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(f"{url}: cannot read the shard manifest ({e}); rebuild with `dinotrain shards build`") from e
    if not isinstance(manifest.get("shards"), list):
        raise DataError(f"{url}: manifest has no 'shards' list; rebuild with `dinotrain shards build`")
    return manifest


def parse_idx(text: str, shard: str) -> list[SampleRef]:
    """Samples of one shard from its wds2idx text (components grouped per sample)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v1."):
        raise DataError(f"{shard}: index is not in DALI wds2idx format (first line {lines[:1]}); rerun wds2idx")
    out = []
    for line in lines[1:]:
        parts = line.split()
        if not parts:
            continue
        if len(parts) % 4:
            raise DataError(f"{shard}: malformed index line {line[:80]!r}; rerun wds2idx on the shard")
        comps = {}
        key = None
        for i in range(0, len(parts), 4):
            ext, off, size, name = parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]
            key = name.rsplit("/", 1)[-1].split(".", 1)[0]
            comps[ext.lower()] = (off, size)
        image_ext = next((e for e in IMAGE_EXTS if e in comps), None)
        if image_ext is None:
            raise DataError(f"shard {shard}: sample '{key}' has no image (found: {', '.join(sorted(comps))})")
        meta = comps.get("json", (-1, 0))
        out.append(SampleRef(shard, key, image_ext, *comps[image_ext], *meta))
    return out


def index_source(root: str, split: str) -> list[SampleRef]:
    """Every sample of `split` under a `shards build` output folder, in manifest order."""
    manifest = read_manifest(root)
    refs: list[SampleRef] = []
    shards = [s for s in manifest["shards"] if s.get("split", split) == split]
    if not shards:
        splits = sorted({str(s.get("split")) for s in manifest["shards"]})
        raise DataError(f"{root}/manifest.json: no shards of split '{split}' (found: {', '.join(splits)})")
    for s in shards:
        tar = _join(root, s["path"])
        if s.get("index"):
            idx = _join(root, s["index"])
        else:
            idx = tar[: -len(".tar")] + ".idx" if tar.endswith(".tar") else tar + ".idx"
        try:
            with fsspec.open(idx, "rt") as f:
                text = f.read()
        except FileNotFoundError:
            raise DataError(f"shard {tar}: index {idx} is missing; create it with `wds2idx {tar} {idx}`") from None
        except OSError as e:
            raise DataError(f"shard {tar}: cannot read index {idx}: {e}") from e
        found = parse_idx(text, tar)
        if "samples" in s and int(s["samples"]) != len(found):
            raise DataError(
                f"shard {tar}: manifest says {s['samples']} samples but the index lists {len(found)}; "
                "the shard set is inconsistent, rebuild it"
            )
        refs.extend(found)
    return refs


def sample_span(ref: SampleRef) -> tuple[int, int]:
    """(offset, size) of one read covering the image and, when it sits next to it, the json."""
    if ref.meta_offset < 0:
        return ref.image_offset, ref.image_size
    lo = min(ref.image_offset, ref.meta_offset)
    hi = max(ref.image_offset + ref.image_size, ref.meta_offset + ref.meta_size)
    if hi - lo <= ref.image_size + ref.meta_size + 4096:  # tar headers between them: read through
        return lo, hi - lo
    return ref.image_offset, ref.image_size


class ShardReader:
    """Ranged reads from shards (one instance per loader).

    Local files: a bounded set of open handles, read in order. Remote URLs (s3://...): each
    range is a stateless request, issued from a small thread pool so a batch costs about one
    round trip instead of one per sample.
    """

    def __init__(self, max_open: int = 32, remote_threads: int = 16):
        self.max_open = max_open
        self.remote_threads = remote_threads
        self._files: OrderedDict[str, object] = OrderedDict()
        self._pool = None

    def _file(self, path: str):
        f = self._files.get(path)
        if f is not None:
            self._files.move_to_end(path)
            return f
        try:
            f = fsspec.open(path, "rb").open()
        except (OSError, ValueError) as e:
            raise DataError(f"shard {path}: cannot open ({e}); check the path and credentials") from e
        self._files[path] = f
        while len(self._files) > self.max_open:
            _, old = self._files.popitem(last=False)
            old.close()
        return f

    @staticmethod
    def _check(shard: str, offset: int, size: int, data: bytes) -> bytes:
        if len(data) != size:
            raise DataError(
                f"shard {shard}: truncated (wanted {size} bytes at offset {offset}, got {len(data)}); rebuild the shard"
            )
        return data

    def read(self, shard: str, offset: int, size: int) -> bytes:
        f = self._file(shard)
        try:
            f.seek(offset)
            data = f.read(size)
        except OSError as e:
            raise DataError(f"shard {shard}: read of {size} bytes at {offset} failed: {e}") from e
        return self._check(shard, offset, size, data)

    def _read_remote(self, shard: str, offset: int, size: int) -> bytes:
        try:
            fs, path = fsspec.core.url_to_fs(shard)
            data = fs.cat_file(path, start=offset, end=offset + size)
        except FileNotFoundError:
            raise DataError(f"shard {shard}: not found; check data.sources[].path and the manifest") from None
        except (OSError, ValueError) as e:
            raise DataError(f"shard {shard}: read of {size} bytes at {offset} failed: {e}") from e
        return self._check(shard, offset, size, data)

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        """The bytes of each (shard, offset, size), in order."""
        if not any("://" in r[0] and not r[0].startswith("file://") for r in requests):
            return [self.read(*r) for r in requests]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.remote_threads, thread_name_prefix="shard-read")
        return list(self._pool.map(lambda r: self._read_remote(*r), requests))

    def close(self) -> None:
        while self._files:
            _, f = self._files.popitem()
            f.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
