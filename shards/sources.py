"""SOURCE arguments -> the sorted list of input files, and per-image metadata joined from a CSV.

A SOURCE is a file, a folder (searched recursively), a glob pattern, or a CSV listing with a
`path` column (its rows are also the metadata of those files). Paths are local or any fsspec
URL (s3://...). The list is sorted and de-duplicated so that the build is a function of the
set of inputs, not of the order they were named in.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import posixpath
from dataclasses import dataclass, field

from shards.storage import filesystem, is_remote, read_bytes, strip_file

# files that are never images, skipped silently when walking a folder (they are not inputs)
SKIP_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class SourceError(ValueError):
    """A SOURCE or --metadata argument that cannot be used; the message names it and the fix."""


@dataclass
class Inputs:
    files: list[str]
    metadata: dict[str, dict] = field(default_factory=dict)  # source -> CSV row


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _norm(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(strip_file(path))


def _walk_local(root: str) -> list[str]:
    """Files under root (following symlinked folders once: a link loop is not walked twice)."""
    out, seen = [], set()
    for d, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        out.extend(os.path.join(d, f) for f in files if f not in SKIP_NAMES and not f.startswith("."))
    return out


def _expand_remote(src: str, storage_options: dict | None) -> list[str]:
    fs, path = filesystem(src, storage_options)
    protocol = src.split("://", 1)[0]
    if _is_glob(path):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.exists(path):
        found = [path]
    else:
        raise SourceError(f"source {src} does not exist")
    return [f"{protocol}://{p}" for p in found if posixpath.basename(p) not in SKIP_NAMES]


def read_csv(url: str, storage_options: dict | None = None) -> list[dict]:
    try:
        text = read_bytes(url, storage_options).decode("utf-8-sig")
    except FileNotFoundError:
        raise SourceError(f"CSV {url} not found") from None
    return list(csv.DictReader(io.StringIO(text)))


def join_relative(base: str, rel: str) -> str:
    """`rel` resolved against the folder of the file `base` (local or URL); absolute paths stay."""
    if is_remote(rel) or os.path.isabs(rel):
        return _norm(rel)
    if is_remote(base):
        return posixpath.normpath(posixpath.join(base.rsplit("/", 1)[0], rel)).replace(":/", "://", 1)
    return os.path.abspath(os.path.join(os.path.dirname(base), rel))


def expand(sources: list[str], storage_options: dict | None = None) -> Inputs:
    """All input files named by SOURCE arguments (sorted, unique) and the rows of CSV listings."""
    if not sources:
        raise SourceError("no SOURCE given: name files, folders, glob patterns or a CSV with a `path` column")
    files: set[str] = set()
    rows: dict[str, dict] = {}
    for src in sources:
        if src.lower().endswith(".csv"):
            listing = read_csv(src if is_remote(src) else _norm(src), storage_options)
            if listing and "path" not in listing[0]:
                raise SourceError(f"CSV listing {src} has no `path` column (columns: {', '.join(listing[0])})")
            base = src if is_remote(src) else _norm(src)
            for row in listing:
                if row.get("path"):
                    p = join_relative(base, row["path"])
                    files.add(p)
                    rows[p] = row
            continue
        if is_remote(src):
            files.update(_expand_remote(src, storage_options))
            continue
        local = _norm(src)
        if _is_glob(src):
            matched = glob.glob(local, recursive=True)
            for m in matched:
                files.update(_walk_local(m) if os.path.isdir(m) else [m])
        elif os.path.isdir(local):
            files.update(_walk_local(local))
        elif os.path.exists(local):
            files.add(local)
        else:
            raise SourceError(f"source {src} does not exist (give a file, a folder, a glob or a CSV listing)")
    return Inputs(sorted(files), rows)


@dataclass
class MetadataTable:
    """Rows of a metadata CSV, looked up by absolute path, then by an id column, then by file name."""

    by_path: dict[str, dict]
    by_id: dict[str, dict]
    by_name: dict[str, dict]
    id_column: str | None

    def lookup(self, source: str) -> dict | None:
        row = self.by_path.get(source)
        if row is not None:
            return row
        name = source.rsplit("/", 1)[-1]
        stem = name.split(".", 1)[0]
        if self.id_column is not None:
            row = self.by_id.get(stem) or self.by_id.get(name)
            if row is not None:
                return row
        return self.by_name.get(name)


def load_metadata(url: str, id_column: str | None = None, storage_options: dict | None = None) -> MetadataTable:
    base = url if is_remote(url) else _norm(url)
    rows = read_csv(base, storage_options)
    if not rows:
        raise SourceError(f"metadata {url} has no rows")
    cols = list(rows[0])
    if "path" not in cols and id_column is None:
        raise SourceError(f"metadata {url} has neither a `path` column nor --id-column (columns: {', '.join(cols)})")
    if id_column is not None and id_column not in cols:
        raise SourceError(f"metadata {url} has no column '{id_column}' (columns: {', '.join(cols)}): fix --id-column")
    by_path, by_id, names = {}, {}, {}
    for row in rows:
        if row.get("path"):
            p = join_relative(base, row["path"])
            by_path[p] = row
            names.setdefault(p.rsplit("/", 1)[-1], []).append(row)
        if id_column is not None and row.get(id_column):
            by_id[str(row[id_column])] = row
    # a bare file name only joins when it is unambiguous
    by_name = {n: r[0] for n, r in names.items() if len(r) == 1}
    return MetadataTable(by_path, by_id, by_name, id_column)
