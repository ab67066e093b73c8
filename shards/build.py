"""`shards build`: inputs -> samples (parallel) -> shards in input order -> manifest.

Determinism: inputs are sorted; workers return results in input order (imap); the parent
alone decides duplicates and shard membership (the j-th sample of a split goes to shard
j // samples_per_shard). So the bytes never depend on --workers.

Resume: each finished shard is renamed into place, then a checkpoint `.build/ckpt-NNNNNN.json`
records the outcomes (keys, splits, checksums, rejects: no pixels) of the inputs processed
since the previous one. A rerun replays the checkpoints, re-decodes only the inputs whose
samples belong to unfinished shards, and continues; the final manifest equals that of an
uninterrupted build. `.build/` is removed once manifest.json is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter

from shards import manifest as mf
from shards.codecs import CODECS
from shards.keys import SPLITS
from shards.parallel import ordered_map
from shards.process import RESAMPLE, ProcessOptions
from shards.readers import ReadOptions
from shards.samples import SampleOptions, make_samples
from shards.sources import SourceError, expand, load_metadata
from shards.storage import Output
from shards.writer import ShardWriter

DEFAULT_SAMPLES_PER_SHARD = 1000
# what a worker imports to decode any input: a fork server (used when the builder cannot fork)
# imports these once for all workers; a missing optional decoder is skipped
WORKER_MODULES = ("shards.samples", "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.TiffImagePlugin",
                  "pydicom", "pydicom.pixels", "nibabel", "fsspec")
# inputs sent to a worker in one round trip: amortises the pool's per-task cost (benchmarks/shards_build.py)
TASKS_PER_CHUNK = 4
STATE_DIR = ".build"


class BuildError(RuntimeError):
    """A fatal problem (no inputs, OUT not writable, OUT holding another build): nothing to resume."""


def shard_name(name: str, split: str, index: int) -> str:
    return f"{name}-{split}-{index:06d}"


def _check(name: str, size: int, bits, channels: int, val_fraction: float, test_fraction: float,
           samples_per_shard: int, resample: str, dicom_window: str, frames: str) -> None:
    if not name or any(c in name for c in "/\\. \t") or name.startswith("-"):
        raise BuildError(f"--name {name!r}: use letters, digits, '-' or '_' (no dots, slashes or spaces)")
    if size < 0:
        raise BuildError(f"--size {size}: must be >= 0 (0 keeps the original size)")
    if bits not in (None, 8, 16):
        raise BuildError(f"--bits {bits}: allowed values are 8 and 16")
    if channels not in (1, 3):
        raise BuildError(f"--channels {channels}: allowed values are 1 and 3")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise BuildError(f"--val-fraction {val_fraction} + --test-fraction {test_fraction}: each in [0, 1), sum < 1")
    if samples_per_shard < 1:
        raise BuildError(f"--samples-per-shard {samples_per_shard}: must be >= 1")
    if resample not in RESAMPLE:
        raise BuildError(f"--resample {resample!r}: allowed values are {', '.join(RESAMPLE)}")
    if dicom_window not in ("auto", "none", "minmax"):
        raise BuildError(f"--dicom-window {dicom_window!r}: allowed values are auto, none, minmax")
    if frames not in ("all", "middle"):
        raise BuildError(f"--frames {frames!r}: allowed values are all, middle")


def _fingerprint(options: dict, files: list[str]) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f.encode() + b"\n")
    return h.hexdigest()[:16]


def _own_files(out: Output, name: str) -> list[str]:
    """Names in OUT that a build of `name` writes (the only files --overwrite removes)."""
    own = []
    for n in out.listdir():
        if n in ("manifest.json", "rejects.jsonl", STATE_DIR):
            own.append(n)
        elif n.startswith(f"{name}-") and n.endswith((".tar", ".idx")):
            own.append(n)
    return own


def _outcome(res: dict) -> dict:
    """What a checkpoint keeps of a worker result: everything but the pixels."""
    out = {k: v for k, v in res.items() if k != "samples"}
    out["samples"] = [{k: v for k, v in s.items() if k not in ("image", "json")} for s in res["samples"]]
    return out


class _Assembler:
    """Feeds samples to per-split shard writers in input order; commits full shards."""

    def __init__(self, out: Output, name: str, per_shard: int, finished: dict, fingerprint: str, seq: int):
        self.out, self.name, self.per_shard = out, name, per_shard
        self.finished = finished  # shard name -> record (from checkpoints or this run)
        self.fingerprint = fingerprint
        self.seq = seq
        self.count = Counter()  # samples assigned per split so far
        self.writers: dict[str, tuple[int, ShardWriter]] = {}
        self.seen: set[str] = set()
        self.pending: list[dict] = []  # outcomes not yet in a checkpoint

    def shard_of(self, split: str) -> tuple[int, str]:
        j = self.count[split] // self.per_shard
        return j, shard_name(self.name, split, j)

    def add(self, split: str, key: str, image: bytes | None, js: bytes | None, ext: str = "png") -> None:
        j, sname = self.shard_of(split)
        self.count[split] += 1
        if sname in self.finished:
            return
        if image is None:
            raise RuntimeError(f"internal: sample {key} of unfinished shard {sname} has no bytes on resume")
        cur = self.writers.get(split)
        if cur is None:
            cur = (j, ShardWriter(os.path.join(self.out.staging(), f"{sname}.tar")))
            self.writers[split] = cur
        cur[1].add(key, [(ext, image), ("json", js)])
        if cur[1].samples == self.per_shard:
            self.commit(split)

    def commit(self, split: str) -> None:
        j, w = self.writers.pop(split)
        sname = shard_name(self.name, split, j)
        facts = w.close()
        # index first, then the tar, then the checkpoint: a shard counts as finished only when
        # a checkpoint names it, and a checkpointed shard always has its index
        self.out.write_bytes(f"{sname}.idx", facts["index"].encode())
        self.out.commit(w.path, f"{sname}.tar")
        rec = {"path": f"{sname}.tar", "index": f"{sname}.idx", "split": split, "samples": facts["samples"],
               "bytes": facts["bytes"], "sha256": facts["sha256"]}
        self.finished[sname] = rec
        ckpt = {"fingerprint": self.fingerprint, "shard": rec, "outcomes": self.pending}
        self.out.write_bytes(f"{STATE_DIR}/ckpt-{self.seq:06d}.json", json.dumps(ckpt).encode())
        self.seq += 1
        self.pending = []

    def close(self) -> None:
        for split in [s for s in SPLITS if s in self.writers] + sorted(set(self.writers) - set(SPLITS)):
            self.commit(split)

    def abort(self) -> None:
        for _, w in self.writers.values():
            w.abort()


def _load_checkpoints(out: Output, fingerprint: str) -> tuple[dict, list[dict], int]:
    finished, outcomes, seq = {}, [], 0
    names = [n for n in out.listdir(STATE_DIR) if n.startswith("ckpt-") and n.endswith(".json")]
    for n in names:
        try:
            ck = json.loads(out.read_bytes(f"{STATE_DIR}/{n}"))
        except (ValueError, OSError):
            break  # a checkpoint cut short: everything after it is redone
        if ck.get("fingerprint") != fingerprint:
            raise BuildError(
                f"{out.url} holds an unfinished build with other inputs or options: rerun the same command, "
                "or pass --overwrite to start again"
            )
        finished[ck["shard"]["path"][: -len(".tar")]] = ck["shard"]
        outcomes.extend(ck["outcomes"])
        seq += 1
    return finished, outcomes, seq


def _needs_redo(outcomes: list[dict], finished: dict, name: str, per_shard: int) -> set[int]:
    """Replayed inputs whose samples fall into shards that were not finished: decode them again."""
    count, seen, redo = Counter(), set(), set()
    for o in outcomes:
        for s in o["samples"]:
            if s["src_sha"] in seen and s.get("dedup"):
                continue
            if s.get("dedup"):
                seen.add(s["src_sha"])
            j = count[s["split"]] // per_shard
            count[s["split"]] += 1
            if shard_name(name, s["split"], j) not in finished:
                redo.add(o["i"])
    return redo


def build_shards(
    sources: list[str],
    out: str,
    *,
    name: str,
    size: int = 518,
    workers: int | None = None,
    metadata: str | None = None,
    id_column: str | None = None,
    modality: str | None = None,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    split_salt: str = "dinotrain",
    patient_column: str = "patient_id",
    bits: int | None = None,
    channels: int = 1,
    resample: str = "bicubic",
    upscale: bool = False,
    dicom_window: str = "auto",
    frames: str = "all",
    axis: int = 2,
    slice_stride: int = 1,
    ct_window: tuple[float, float] | None = None,
    dedup: bool = False,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    compress_level: int = 6,
    codec: str = "png",
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build shards of `sources` into `out`; returns the manifest (also written to OUT/manifest.json).

    Raises BuildError (or OSError when OUT is not writable) for fatal problems; bad inputs only go
    to rejects.jsonl. Rerunning after a kill resumes; rerunning a finished build returns its manifest.
    """
    _check(name, size, bits, channels, val_fraction, test_fraction, samples_per_shard, resample,
           dicom_window, frames)
    if codec not in CODECS:
        raise BuildError(f"--codec {codec!r}: allowed values are {', '.join(CODECS)}")
    sopts = SampleOptions(
        name=name,
        read=ReadOptions(dicom_window=dicom_window, frames=frames, axis=axis, slice_stride=slice_stride,
                         ct_window=tuple(ct_window) if ct_window else None),
        process=ProcessOptions(size=size, resample=resample, upscale=upscale, bits=bits, channels=channels,
                               compress_level=compress_level, codec=codec),
        modality=modality, patient_column=patient_column, split_salt=split_salt,
        val_fraction=val_fraction, test_fraction=test_fraction, hash_source=dedup,
    )
    # what determines the output bytes (not --workers, --progress, credentials)
    options = {"sample": sopts.as_dict(), "dedup": dedup, "samples_per_shard": samples_per_shard,
               "metadata": metadata, "id_column": id_column, "sources": list(sources)}

    try:
        inputs = expand(sources, storage_options)
    except SourceError as e:
        raise BuildError(str(e)) from None
    files = inputs.files
    if not files:
        raise BuildError(f"no input files found under {', '.join(sources)}")
    table = load_metadata(metadata, id_column, storage_options) if metadata else None
    fingerprint = _fingerprint(options, files)

    outp = Output(out, storage_options)
    outp.ensure()
    if overwrite:
        for n in _own_files(outp, name):
            outp.remove(n)
    if outp.exists("manifest.json"):
        old = json.loads(outp.read_bytes("manifest.json"))
        if old.get("fingerprint") == fingerprint:
            outp.remove(STATE_DIR)  # a kill after the manifest, before the clean-up
            if progress:
                print(f"{outp.url}: already built (manifest.json matches); pass --overwrite to rebuild",
                      file=sys.stderr)
            return old
        raise BuildError(f"{outp.url} already holds a different build (manifest.json): pass --overwrite to replace it, "
                         "or choose another --out")
    finished, replayed, seq = _load_checkpoints(outp, fingerprint)
    if not finished and not replayed:
        stale = [n for n in _own_files(outp, name) if n != STATE_DIR]
        if stale:
            raise BuildError(f"{outp.url} holds files of another build ({stale[0]} ...): pass --overwrite, or choose "
                             "another --out")
    if not outp.remote:
        outp.remove(f"{STATE_DIR}/partial")  # shards being written when the last run died
    replayed_by_i = {o["i"]: o for o in replayed}
    redo = _needs_redo(replayed, finished, name, samples_per_shard)

    def row_of(src: str) -> tuple[dict | None, str | None]:
        row = table.lookup(src) if table is not None else None
        if row is not None:
            return row, os.path.abspath(metadata) if "://" not in metadata else metadata
        row = inputs.metadata.get(src)
        return row, None if row is None else _listing_csv(sources, src)

    n_total = len(files)
    todo = [i for i in range(n_total) if i not in replayed_by_i or i in redo]
    tasks = ((i, files[i], *row_of(files[i]), sopts) for i in todo)

    asm = _Assembler(outp, name, samples_per_shard, finished, fingerprint, seq)
    outcomes: list[dict] = []
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    if workers > 1 and len(todo) > 1:
        results = ordered_map(make_samples, tasks, workers, _crashed, preload=WORKER_MODULES,
                              chunk=TASKS_PER_CHUNK)
    else:
        results = map(make_samples, tasks)

    bar = _progress_bar(total=n_total, unit="img", desc=f"shards {name}", disable=not progress,
                        dynamic_ncols=True, smoothing=0.1)
    written = rejected = dups = 0
    try:
        for i in range(n_total):
            fresh = i in replayed_by_i and i not in redo
            res = replayed_by_i[i] if fresh else next(results)
            if res["i"] != i:
                raise RuntimeError(f"internal: result for input {res['i']} arrived at position {i}")
            o = res if fresh else _outcome(res)
            any_written = False
            for s_out, s in zip(o["samples"], res["samples"]):
                if dedup:
                    s_out["dedup"] = True
                    if s_out["src_sha"] in asm.seen:
                        s_out["duplicate"] = True
                        continue
                    asm.seen.add(s_out["src_sha"])
                s_out.pop("duplicate", None)
                any_written = True
                asm.add(s_out["split"], s_out["key"], s.get("image"), s.get("json"), s_out["ext"])
            if o["status"] == "rejected":
                rejected += 1
            elif any_written:
                written += 1
            else:
                dups += 1
            outcomes.append(o)
            if i not in replayed_by_i:
                asm.pending.append(o)
            bar.update(1)
            if progress and (i % 16 == 0 or i == n_total - 1):
                bar.set_postfix(written=written, rejected=rejected, duplicates=dups, refresh=False)
        if next(results, None) is not None:  # also lets the worker pool shut down cleanly
            raise RuntimeError("internal: more results than inputs")
        asm.close()
    except BaseException:
        asm.abort()
        raise
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()  # shuts the worker pool down

    man = mf.make_manifest(name=name, codec=codec, options=options, fingerprint=fingerprint, outcomes=outcomes,
                           shards=list(asm.finished.values()), files=files)
    outp.write_bytes("rejects.jsonl", mf.rejects_jsonl(outcomes).encode())
    outp.write_bytes("manifest.json", mf.dumps(man).encode())
    outp.remove(STATE_DIR)
    outp.cleanup_staging()
    if progress:
        print(mf.final_line(man))
    return man


def _progress_bar(**kw):
    from tqdm.auto import tqdm

    class Bar(tqdm):
        # no monitor thread: a process with threads cannot fork safely, and the builder forks its
        # workers (again after a worker crash, and on every build of a long-lived process)
        monitor_interval = 0

    return Bar(**kw)


def _crashed(task: tuple, error: str) -> dict:
    """The result recorded for an input whose decoder killed the worker process (twice)."""
    return {"i": task[0], "source": task[1], "status": "rejected", "samples": [], "frame_rejects": [], "frames": 0,
            "reason": "worker_crash", "error": error}


def _listing_csv(sources: list[str], src: str) -> str | None:
    """The CSV listing (among SOURCE arguments) a file came from, to resolve its mask paths."""
    for s in sources:
        if s.lower().endswith(".csv"):
            return os.path.abspath(s) if "://" not in s else s
    return None

