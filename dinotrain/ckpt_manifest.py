"""Checkpoint manifests: a checkpoint folder is complete only when its manifest, written last, matches.

`manifest.json` lists every other file of the folder with its size and CRC-32 (zlib's: fast,
in the standard library; it catches truncation and bit rot, not tampering, which is not the
threat here). It is written after every rank's files and `meta.json`, and before the folder is
renamed into place, so a folder with a manifest was fully written once; the check then tells
whether it still is (a file deleted, truncated or damaged later).

Folders written before manifests existed (no `manifest.json`) are "legacy": complete when
`meta.json` and DCP's `.metadata` are there (the rule of those versions), with no data check.

This module imports nothing heavy: eval, export and `dinotrain verify` use it without torch.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 22

COMPLETE, LEGACY, BROKEN = "complete", "legacy", "broken"


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def build_manifest(folder: Path) -> dict:
    """Every regular file under `folder` (but the manifest) with its size and CRC-32."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "crc32": file_crc32(p)}
    return {"format": FORMAT, "files": files}


def write_manifest(folder: Path) -> Path:
    """Write `folder/manifest.json` (the last file of a checkpoint); fsync'd, so that a crash
    after the rename cannot leave a manifest that names data still in the page cache only."""
    import os

    path = folder / MANIFEST
    data = json.dumps(build_manifest(folder), indent=1) + "\n"
    with open(path, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


@dataclass(frozen=True)
class FolderState:
    status: str  # COMPLETE | LEGACY | BROKEN
    reason: str = ""  # why BROKEN, in words
    n_files: int = 0
    n_bytes: int = 0

    @property
    def usable(self) -> bool:
        return self.status in (COMPLETE, LEGACY)


def _read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        files = data["files"]
        if not isinstance(files, dict):
            return None
        return files
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_folder(folder: Path, checksums: bool = False) -> FolderState:
    """The state of one checkpoint folder. Sizes are always compared (cheap); CRC-32s only with
    `checksums` (a full read: done before a checkpoint is loaded, and by `dinotrain verify`)."""
    if not (folder / MANIFEST).is_file():
        if (folder / "meta.json").is_file() and (folder / ".metadata").is_file():
            return FolderState(LEGACY)
        return FolderState(BROKEN, "no manifest.json: its write never finished")
    files = _read_manifest(folder)
    if files is None:
        return FolderState(BROKEN, "manifest.json cannot be read")
    total = 0
    for name, rec in sorted(files.items()):
        p = folder / name
        if not p.is_file():
            return FolderState(BROKEN, f"{name} is missing")
        size = p.stat().st_size
        if size != rec.get("size"):
            return FolderState(BROKEN, f"{name} has {size} bytes, the manifest says {rec.get('size')}")
        total += size
    if checksums:
        for name, rec in sorted(files.items()):
            if file_crc32(folder / name) != rec.get("crc32"):
                return FolderState(BROKEN, f"{name} does not match its checksum (damaged)")
    return FolderState(COMPLETE, n_files=len(files), n_bytes=total)
