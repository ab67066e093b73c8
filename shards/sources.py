"""SOURCE arguments -> the sorted list of input files, and per-image metadata joined from a CSV.

A SOURCE is a file, a folder (searched recursively), a glob pattern, or a CSV listing with a
`path` column (its rows are also the metadata of those files). Paths are local or any fsspec
URL (s3://...). The list is sorted and de-duplicated so that the build is a function of the
set of inputs, not of the order they were named in.

A listing's rows are confined to its root (the CSV's folder, or --root): a row that names a file
outside it (`../x.png`, `/etc/passwd`, a symlink whose target lies outside) is an input refused
before anything opens it (`Inputs.refused`, reject reason `outside_root`), unless
--allow-outside-root. A CSV is data that may come from elsewhere; the files and folders named
on the command line are the user's own choice and are not confined.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import posixpath
from dataclasses import dataclass, field

from shards.storage import filesystem, is_remote, read_bytes, strip_file

# files that are never images, skipped when walking a folder (they are not inputs; counted)
SKIP_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
EXAMPLES = 5  # names kept per kind of skipped or unmatched entry (the counts are complete)


class SourceError(ValueError):
    """A SOURCE or --metadata argument that cannot be used; the message names it and the fix."""


@dataclass
class Skipped:
    """What a folder walk left out: hidden entries (name starting with '.': files, and folders such
    as .git/ whose content is not walked) and OS clutter files (SKIP_NAMES)."""

    hidden: int = 0
    system: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, path: str, hidden: bool) -> None:
        if hidden:
            self.hidden += 1
        else:
            self.system += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(path)


@dataclass
class Inputs:
    files: list[str]
    metadata: dict[str, dict] = field(default_factory=dict)  # source -> CSV row
    skipped: Skipped = field(default_factory=Skipped)
    csv_sha256: dict[str, str] = field(default_factory=dict)  # listing CSV -> sha256 of its bytes
    refused: dict[str, str] = field(default_factory=dict)  # listing row outside its root -> why (never read)


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _norm(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(strip_file(path))


def _walk_local(root: str, skipped: Skipped) -> list[str]:
    """Files under root (following symlinked folders once: a link loop is not walked twice)."""
    out, seen = [], set()
    for d, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for x in dirs:
            if x.startswith("."):
                skipped.add(os.path.join(d, x) + "/", hidden=True)
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for f in files:
            if f.startswith(".") or f in SKIP_NAMES:
                skipped.add(os.path.join(d, f), hidden=f not in SKIP_NAMES)
            else:
                out.append(os.path.join(d, f))
    return out


def _expand_remote(src: str, storage_options: dict | None, skipped: Skipped) -> list[str]:
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
    out = []
    base = path.rstrip("/")
    for p in found:
        parts = p[len(base):].strip("/").split("/") if p.startswith(base) else [posixpath.basename(p)]
        if any(x.startswith(".") for x in parts) or parts[-1] in SKIP_NAMES:
            skipped.add(f"{protocol}://{p}", hidden=parts[-1] not in SKIP_NAMES)
        else:
            out.append(f"{protocol}://{p}")
    return out


@dataclass
class Csv:
    url: str
    rows: list[dict]
    lines: list[int]  # line number of each row in the file (header = line 1)
    sha256: str


def read_csv(url: str, storage_options: dict | None = None) -> Csv:
    if not is_remote(url) and os.path.exists(url) and not os.path.isfile(url):
        raise SourceError(f"CSV {url} is not a regular file (a FIFO, device or folder): name the CSV file itself")
    try:
        data = read_bytes(url, storage_options)
    except FileNotFoundError:
        raise SourceError(f"CSV {url} not found") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"CSV {url} is not UTF-8 ({e}): save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    rows, lines = [], []
    for row in reader:
        rows.append(row)
        lines.append(reader.line_num)
    return Csv(url, rows, lines, hashlib.sha256(data).hexdigest())


def join_relative(base: str, rel: str) -> str:
    """`rel` resolved against the folder of the file `base` (local or URL); absolute paths stay."""
    if is_remote(rel) or os.path.isabs(rel):
        return _norm(rel)
    if is_remote(base):
        return posixpath.normpath(posixpath.join(base.rsplit("/", 1)[0], rel)).replace(":/", "://", 1)
    return os.path.abspath(os.path.join(os.path.dirname(base), rel))


def _resolved(url: str) -> tuple[str, str]:
    """(protocol or "", path with `..` collapsed and, locally, every symlink resolved)."""
    if is_remote(url):
        protocol, path = url.split("://", 1)
        return protocol, posixpath.normpath("/" + path)
    return "", os.path.realpath(strip_file(url))


def outside_root(path: str, root: str) -> str | None:
    """Why `path` (an absolute path or URL) is not inside the folder `root`, or None when it is.
    Locally both are compared after resolving symlinks: what counts is the file that would be read."""
    (p_proto, p), (r_proto, r) = _resolved(path), _resolved(root)
    sep = "/" if r_proto else os.sep
    if p_proto == r_proto and (p == r or p.startswith(r.rstrip(sep) + sep)):
        return None
    shown = f"{p_proto}://{p.lstrip('/')}" if p_proto else p
    via = f" (through a symlink: {path} -> {shown})" if not p_proto and shown != os.path.abspath(path) else ""
    return (f"outside the listing's root {root}{via}: pass --root FOLDER to widen the root, or "
            "--allow-outside-root to read any path the CSV names")


def _listing_root(csv_url: str, root: str | None) -> str:
    if root is not None:
        return root if is_remote(root) else _norm(root)
    return csv_url.rsplit("/", 1)[0] if is_remote(csv_url) else os.path.dirname(csv_url)


def index_rows(table: Csv, key_of, what: str, policy: str) -> dict[str, dict]:
    """key -> row for the rows of `table` with a key; several different rows for one key raise
    SourceError naming their lines (policy 'error'), else the first or last is kept."""
    out: dict[str, dict] = {}
    line_of: dict[str, int] = {}
    conflicts = []
    for row, line in zip(table.rows, table.lines):
        key = key_of(row)
        if not key:
            continue
        if key in out and out[key] != row:
            conflicts.append((key, line_of[key], line))
            if policy != "last":
                continue
        elif key in out:
            continue  # the same row twice: harmless
        out[key], line_of[key] = row, line
    if conflicts and policy == "error":
        listed = "; ".join(f"lines {a} and {b} for {k}" for k, a, b in conflicts[:3])
        more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        raise SourceError(f"{table.url}: different rows for the same {what}: {listed}{more}: remove the wrong "
                          "rows, or pass --duplicate-rows first|last to keep one")
    return out


def expand(sources: list[str], storage_options: dict | None = None, duplicate_rows: str = "error",
           root: str | None = None, allow_outside_root: bool = False) -> Inputs:
    """All input files named by SOURCE arguments (sorted, unique) and the rows of CSV listings;
    listing rows outside their root (the CSV's folder, or `root`) in `refused` unless allowed."""
    if not sources:
        raise SourceError("no SOURCE given: name files, folders, glob patterns or a CSV with a `path` column")
    files: set[str] = set()
    inputs = Inputs([])
    named: set[str] = set()  # named by a SOURCE that is not a listing: never refused
    for src in sources:
        if src.lower().endswith(".csv"):
            base = src if is_remote(src) else _norm(src)
            listing = read_csv(base, storage_options)
            if listing.rows and "path" not in listing.rows[0]:
                raise SourceError(f"CSV listing {src} has no `path` column (columns: {', '.join(listing.rows[0])})")
            inputs.csv_sha256[base] = listing.sha256
            rows = index_rows(listing, lambda r, base=base: r.get("path") and join_relative(base, r["path"]),
                              "path", duplicate_rows)
            files.update(rows)
            inputs.metadata.update(rows)
            if not allow_outside_root:
                top = _listing_root(base, root)
                inputs.refused.update((p, why) for p in rows if (why := outside_root(p, top)) is not None)
            continue
        named.update(_expand_one(src, storage_options, inputs.skipped))
    files |= named
    for p in named & set(inputs.refused):
        del inputs.refused[p]
    inputs.files = sorted(files, key=_sort_key)
    return inputs


def _expand_one(src: str, storage_options: dict | None, skipped: Skipped) -> list[str]:
    """The files one SOURCE that is not a CSV listing names."""
    if is_remote(src):
        return _expand_remote(src, storage_options, skipped)
    local = _norm(src)
    if _is_glob(src):
        out = []
        for m in glob.glob(local, recursive=True):
            out.extend(_walk_local(m, skipped) if os.path.isdir(m) else [m])
        return out
    if os.path.isdir(local):
        return _walk_local(local, skipped)
    if os.path.exists(local) or os.path.islink(local):
        return [local]
    raise SourceError(f"source {src} does not exist (give a file, a folder, a glob or a CSV listing)")


def _sort_key(path: str) -> bytes:
    """Sort by the bytes of the name: also defined for names that are not valid UTF-8."""
    return path.encode("utf-8", "surrogateescape")


@dataclass
class MetadataTable:
    """Rows of a metadata CSV, looked up by absolute path, then by an id column, then by file name."""

    by_path: dict[str, dict]
    by_id: dict[str, dict]
    by_name: dict[str, dict]
    id_column: str | None
    csv: Csv | None = None

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


def load_metadata(url: str, id_column: str | None = None, storage_options: dict | None = None,
                  duplicate_rows: str = "error") -> MetadataTable:
    base = url if is_remote(url) else _norm(url)
    table = read_csv(base, storage_options)
    if not table.rows:
        raise SourceError(f"metadata {url} has no rows")
    cols = list(table.rows[0])
    if "path" not in cols and id_column is None:
        raise SourceError(f"metadata {url} has neither a `path` column nor --id-column (columns: {', '.join(cols)})")
    if id_column is not None and id_column not in cols:
        raise SourceError(f"metadata {url} has no column '{id_column}' (columns: {', '.join(cols)}): fix --id-column")
    by_path = index_rows(table, lambda r: r.get("path") and join_relative(base, r["path"]), "path", duplicate_rows)
    by_id = {}
    if id_column is not None:
        by_id = index_rows(table, lambda r: r.get(id_column) and str(r[id_column]), id_column, duplicate_rows)
    names: dict[str, list[dict]] = {}
    for p, row in by_path.items():
        names.setdefault(p.rsplit("/", 1)[-1], []).append(row)
    # a bare file name only joins when it is unambiguous
    by_name = {n: r[0] for n, r in names.items() if len(r) == 1}
    return MetadataTable(by_path, by_id, by_name, id_column, table)
