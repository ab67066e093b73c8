"""Selections: which samples of a shard set a source trains on, without rewriting its shards.

`dinotrain curate` writes one JSON file per run:

    {"format": "dinotrain-selection/1",
     "sets": [{"path": ROOT, "name": NAME, "manifest_sha256": HEX,
               "shards": {"name-train-000000.tar": {"keep": [KEY, ...], "drop": {KEY: REASON, ...}}}}]}

A source with `selection: PATH` keeps only the samples listed under `keep` for its shard set
(matched by the sha256 of its manifest.json, so a rebuilt or other set is refused, not silently
filtered). The filter runs before `max_samples`, so nested subsets are subsets of the selection and
the stream (and its exact resume) is the same function of the kept samples as of a whole source.
"""

from __future__ import annotations

import hashlib
import json

import fsspec

from dinotrain.data.shard_index import DataError, SampleRef, _join

FORMAT = "dinotrain-selection/1"


def manifest_sha256(root: str) -> str:
    """The identity of a shard set: sha256 of its manifest.json bytes."""
    url = _join(root, "manifest.json")
    try:
        with fsspec.open(url, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        raise DataError(f"{url}: cannot read the shard manifest ({e}); is this a `shards build` output?") from e


def read_selection(path: str) -> dict:
    try:
        with fsspec.open(path, "rt") as f:
            sel = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"selection {path}: cannot read it ({e}); write one with `dinotrain curate`") from e
    if not isinstance(sel, dict) or sel.get("format") != FORMAT or not isinstance(sel.get("sets"), list):
        raise DataError(f"selection {path}: not a {FORMAT} file; write one with `dinotrain curate`")
    return sel


def selection_for(sel: dict, path: str, root: str) -> dict:
    """The entry of `sel` made for the shard set at `root` (by manifest hash)."""
    digest = manifest_sha256(root)
    for entry in sel["sets"]:
        if entry.get("manifest_sha256") == digest:
            return entry
    made = ", ".join(str(e.get("path")) for e in sel["sets"]) or "none"
    raise DataError(f"selection {path} was not made for the shards at {root} (their manifest differs; made for: "
                    f"{made}); rerun `dinotrain curate` on {root}")


def apply_selection(refs: list[SampleRef], path: str | None, root: str) -> list[SampleRef]:
    """`refs` (one source's samples, in manifest order) filtered by the selection at `path`."""
    if not path:
        return refs
    entry = selection_for(read_selection(path), path, root)
    keep: set[tuple[str, str]] = set()
    listed: set[tuple[str, str]] = set()
    for shard, part in entry["shards"].items():
        tar = _join(root, shard)
        keep.update((tar, k) for k in part.get("keep", []))
        listed.update((tar, k) for k in part.get("drop", {}))
    listed |= keep
    missing = [r for r in refs if (r.shard, r.key) not in listed]
    if missing:
        raise DataError(f"selection {path}: sample '{missing[0].key}' of {missing[0].shard} is not in it "
                        f"({len(missing)} such); rerun `dinotrain curate` on {root}")
    return [r for r in refs if (r.shard, r.key) in keep]


def kept_count(path: str, root: str, split: str = "train") -> int:
    """Samples of `split` the selection keeps for the shard set at `root` (what a sweep sizes against)."""
    from dinotrain.data.shard_index import read_manifest

    entry = selection_for(read_selection(path), path, root)
    in_split = {s["path"] for s in read_manifest(root)["shards"] if s.get("split", split) == split}
    return sum(len(part.get("keep", [])) for shard, part in entry["shards"].items() if shard in in_split)
