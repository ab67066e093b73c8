"""Deterministic WebDataset tar writer that produces DALI's wds2idx index as it goes.

Every member header is fixed (mtime 0, uid/gid 0, no user names, mode 0444, USTAR), so the
same samples always give the same bytes, and the index is computed from the offsets we write
instead of re-reading the tar.
"""

from __future__ import annotations

import hashlib
import re
import tarfile

INDEX_VERSION = "v1.2"
MEMBER_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}\.[0-9A-Za-z_-]{1,16}$")  # KEY.EXT, both dot-free


class _HashingFile:
    """File wrapper that hashes and counts what tarfile writes through it."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.pos = 0

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        self.f.flush()


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o444
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def member_bytes(name: str, data: bytes) -> bytes:
    """One USTAR member as `tarfile` writes it: a 512-byte header, the data, zeros to a block."""
    pad = -len(data) % tarfile.BLOCKSIZE
    header = tarinfo(name, len(data)).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    return header + data + tarfile.NUL * pad


class ShardWriter:
    """Write samples (key, [(ext, bytes), ...]) to `path`; `close()` returns the shard's facts.

    The bytes are those of `tarfile` in USTAR format (tests/test_shards_readers.py compares them),
    written directly: `TarFile.addfile` costs the parent about as much per member as the rest of
    the bookkeeping, and the parent's time is what a multi-worker build cannot spread.
    """

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "wb")
        self._hf = _HashingFile(self._file)
        self.samples = 0
        self.index_lines: list[str] = []

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        parts = []
        for ext, data in members:
            name = f"{key}.{ext}"
            if not MEMBER_RE.match(name):
                raise ValueError(f"member name {name!r} is not a short dot-free key plus extension")
            header_at = self._hf.tell()
            self._hf.write(member_bytes(name, data))
            # USTAR with a short name: one 512-byte header block, then the data
            parts.append(f"{ext} {header_at + 512} {len(data)} {name}")
        self.index_lines.append(" ".join(parts))
        self.samples += 1

    def close(self) -> dict:
        # end of archive: two zero blocks, then zeros up to a whole record (as tarfile does)
        self._hf.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        self._hf.write(tarfile.NUL * (-self._hf.pos % tarfile.RECORDSIZE))
        self._file.flush()
        self._file.close()
        return {"samples": self.samples, "bytes": self._hf.pos, "sha256": self._hf.sha.hexdigest(),
                "index": index_text(self.index_lines)}

    def abort(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass


def index_text(lines: list[str]) -> str:
    """DALI wds2idx format: header `v1.2 <samples>`, then per sample `ext offset size name ...`."""
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)
