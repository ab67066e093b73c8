"""`shards build`: inputs -> samples (parallel) -> shards in input order -> manifest.

Determinism: inputs are sorted; workers return results in input order (imap); the parent
alone decides duplicates and shard membership (`Placement`: the j-th sample of a split goes to
shard j // samples_per_shard). So the bytes never depend on --workers.

Resume: each finished shard is renamed into place, then a checkpoint `.build/ckpt-NNNNNN.json`
records the outcomes (keys, splits, checksums, rejects: no pixels) of the inputs processed
since the previous one. A rerun replays the checkpoints, re-decodes only the inputs whose
samples belong to unfinished shards, and continues; the final manifest equals that of an
uninterrupted build. `.build/` is removed once manifest.json is written.

Identity: the fingerprint covers the options that change the output, the list of input files and
the sha256 of every CSV read (--metadata, CSV listings): editing a CSV makes the next run refuse
to reuse the old build and say which option or file changed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
from collections import Counter

from shards import manifest as mf
from shards.keys import SPLITS
from shards.options import DEFAULT_SAMPLES_PER_SHARD, BuildError, BuildOptions
from shards.parallel import ordered_map
from shards.process import ProcessOptions
from shards.readers import ReadOptions
from shards.samples import Result, Sample, SampleOptions, make_samples
from shards.sources import Inputs, MetadataTable, SourceError, expand, join_relative, load_metadata
from shards.storage import Output, is_remote
from shards.writer import ShardWriter

__all__ = ["DEFAULT_SAMPLES_PER_SHARD", "BuildError", "BuildOptions", "build_shards", "shard_name"]

# what a worker imports to decode any input: a fork server (used when the builder cannot fork)
# imports these once for all workers; a missing optional decoder is skipped
WORKER_MODULES = ("shards.samples", "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.TiffImagePlugin",
                  "pydicom", "pydicom.pixels", "nibabel", "fsspec")
# inputs sent to a worker in one round trip: amortises the pool's per-task cost (benchmarks/shards_build.py)
TASKS_PER_CHUNK = 4
STATE_DIR = ".build"
OWN_FILES = ("manifest.json", "rejects.jsonl", "duplicates.jsonl", STATE_DIR)


def shard_name(name: str, split: str, index: int) -> str:
    return f"{name}-{split}-{index:06d}"


class Placement:
    """The one place that decides, in input order, which samples duplicate an earlier one (--dedup)
    and which shard every other sample goes to. Used for the build and to plan a resume."""

    def __init__(self, name: str, per_shard: int, dedup: bool):
        self.name, self.per_shard, self.dedup = name, per_shard, dedup
        self.count: Counter = Counter()  # samples placed per split so far
        self.first: dict[str, tuple[str, int]] = {}  # source pixel sha -> (source, frame) of the first copy

    def place(self, sample: Sample, source: str) -> str | None:
        """The shard name for `sample`, or None for a duplicate (then `sample.duplicate_of` is set)."""
        if self.dedup:
            first = self.first.setdefault(sample.src_sha, (source, sample.frame))
            if first != (source, sample.frame):
                sample.duplicate_of = first
                return None
        sample.duplicate_of = None
        j = self.count[sample.split] // self.per_shard
        self.count[sample.split] += 1
        return shard_name(self.name, sample.split, j)


def _fingerprint(options: dict, files: list[str]) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for f in files:
        # the name's bytes as on disk: also defined for names that are not valid UTF-8
        h.update(f.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:16]


def _own_files(out: Output, name: str) -> list[str]:
    """Names in OUT that a build of `name` writes (the only files --overwrite removes)."""
    return [n for n in out.listdir()
            if n in OWN_FILES or (n.startswith(f"{name}-") and n.endswith((".tar", ".idx")))]


class _Assembler:
    """Feeds samples to per-split shard writers in input order; commits full shards.

    A context manager: leaving the block normally commits the last, partial shards; leaving it
    by an exception (or a kill signal turned into one) closes the open writers without
    committing, so the next run resumes from the last checkpoint."""

    def __init__(self, out: Output, per_shard: int, finished: dict, fingerprint: str, seq: int):
        self.out, self.per_shard = out, per_shard
        self.finished = finished  # shard name -> record (from checkpoints or this run)
        self.fingerprint = fingerprint
        self.seq = seq
        self.writers: dict[str, tuple[str, ShardWriter]] = {}  # split -> (shard name, writer)
        self.pending: list[dict] = []  # outcomes not yet in a checkpoint

    def __enter__(self) -> _Assembler:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            for split in [s for s in SPLITS if s in self.writers] + sorted(set(self.writers) - set(SPLITS)):
                self.commit(split)
            return
        for _, w in self.writers.values():  # shards never committed: the rerun writes them again
            w.abort()
            try:
                os.remove(w.path)
            except OSError:
                pass

    def add(self, shard: str, sample: Sample) -> None:
        if shard in self.finished:
            return
        if sample.image is None:
            raise RuntimeError(f"internal: sample {sample.key} of unfinished shard {shard} has no bytes on resume")
        cur = self.writers.get(sample.split)
        if cur is None:
            cur = self.writers[sample.split] = (shard, ShardWriter(os.path.join(self.out.staging(), f"{shard}.tar")))
        elif cur[0] != shard:
            raise RuntimeError(f"internal: shard {cur[0]} still open when a sample for {shard} arrived")
        cur[1].add(sample.key, [(sample.ext, sample.image), ("json", sample.json)])
        if cur[1].samples == self.per_shard:
            self.commit(sample.split)

    def commit(self, split: str) -> None:
        sname, w = self.writers.pop(split)
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


def _load_checkpoints(out: Output, fingerprint: str) -> tuple[dict, list[Result], int]:
    finished, outcomes, seq = {}, [], 0
    names = [n for n in out.listdir(STATE_DIR) if n.startswith("ckpt-") and n.endswith(".json")]
    for n in names:
        try:
            ck = json.loads(out.read_bytes(f"{STATE_DIR}/{n}"))
        except (ValueError, OSError):
            break  # a checkpoint cut short: everything after it is redone
        if ck.get("fingerprint") != fingerprint:
            raise BuildError(
                f"{out.url} holds an unfinished build with other inputs, options or CSV contents: rerun the "
                "same command, or pass --overwrite to start again"
            )
        finished[ck["shard"]["path"][: -len(".tar")]] = ck["shard"]
        outcomes.extend(Result.from_outcome(o) for o in ck["outcomes"])
        seq += 1
    return finished, outcomes, seq


def _needs_redo(outcomes: list[Result], finished: dict, opts: BuildOptions) -> set[int]:
    """Replayed inputs whose samples fall into shards that were not finished: decode them again."""
    plan = Placement(opts.name, opts.samples_per_shard, opts.dedup)
    redo = set()
    for o in outcomes:
        for s in o.samples:
            shard = plan.place(s, o.source)
            if shard is not None and shard not in finished:
                redo.add(o.i)
    return redo


def _sample_options(opts: BuildOptions) -> SampleOptions:
    return SampleOptions(
        name=opts.name,
        read=ReadOptions(dicom_window=opts.dicom_window, frames=opts.frames, axis=opts.axis,
                         slice_stride=opts.slice_stride, ct_window=tuple(opts.ct_window) if opts.ct_window else None,
                         max_pixels=opts.max_pixels or None),
        process=ProcessOptions(size=opts.size, resample=opts.resample, upscale=opts.upscale, bits=opts.bits,
                               channels=opts.channels, compress_level=opts.compress_level, codec=opts.codec),
        modality=opts.modality, patient_column=opts.patient_column, split_salt=opts.split_salt,
        val_fraction=opts.val_fraction, test_fraction=opts.test_fraction, hash_source=opts.dedup,
        min_size=opts.min_size, max_bytes=None if opts.max_file_mb is None else int(opts.max_file_mb * 2**20),
        sex_map=tuple(sorted((opts.sex_map or {}).items())),
    )


def _reaches(pattern: str, target: str, sep: str) -> bool:
    """Whether walking what `pattern` (a folder or a glob) names would walk into `target`."""
    parts = pattern.rstrip(sep).split(sep)
    magic = next((k for k, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    base, rest = sep.join(parts[:magic]) or sep, parts[magic:]
    if target != base and not target.startswith(base.rstrip(sep) + sep):
        return False
    rel = [p for p in target[len(base):].split(sep) if p]
    if "**" in rest:
        return True
    return all(fnmatch.fnmatchcase(r, p) for r, p in zip(rel, rest))


def _refuse_out_inside_sources(out: str, sources: list[str]) -> None:
    remote = is_remote(out)
    target = out.rstrip("/") if remote else os.path.realpath(out)
    for src in sources:
        if src.lower().endswith(".csv") or is_remote(src) != remote:
            continue
        if remote:
            pattern = src.rstrip("/")
        elif any(c in src for c in "*?["):
            pattern = os.path.abspath(src)
        else:
            pattern = os.path.realpath(src)
        if _reaches(pattern, target, "/" if remote else os.sep):
            raise BuildError(f"--out {out} is inside SOURCE {src}: the next run would read the shards as inputs; "
                             "choose an --out outside the source folders")


def _open_output(opts: BuildOptions, out: str, fingerprint: str, options: dict) -> tuple[Output, dict | None]:
    """OUT ready to write to, or the manifest of the same finished build; refuses another build."""
    outp = Output(out, opts.storage_options)
    outp.ensure()
    if opts.overwrite:
        for n in _own_files(outp, opts.name):
            outp.remove(n)
    if outp.exists("manifest.json"):
        old = json.loads(outp.read_bytes("manifest.json"))
        if old.get("fingerprint") == fingerprint:
            outp.remove(STATE_DIR)  # a kill after the manifest, before the clean-up
            if opts.progress:
                print(f"{outp.url}: already built (manifest.json matches); pass --overwrite to rebuild",
                      file=sys.stderr)
            return outp, old
        raise BuildError(f"{outp.url} already holds a different build ({_what_changed(old, options)}): pass "
                         "--overwrite to rebuild it, or choose another --out")
    return outp, None


def _what_changed(old: dict, options: dict) -> str:
    before = old.get("options", {})
    diff = sorted(k for k in set(before) | set(options) if before.get(k) != options.get(k))
    if "csv_sha256" in diff:
        changed = [p for p, h in options.get("csv_sha256", {}).items() if before.get("csv_sha256", {}).get(p) != h]
        rest = [k for k in diff if k != "csv_sha256"]
        return f"CSV changed since: {', '.join(changed) or 'a CSV'}" + (f"; options differ: {', '.join(rest)}"
                                                                        if rest else "")
    if diff:
        return f"options differ: {', '.join(diff)}"
    return "other input files"


def build_shards(sources: list[str], out: str, options: BuildOptions | None = None, **kw) -> dict:
    """Build shards of `sources` into `out`; returns the manifest (also written to OUT/manifest.json).

    Options: a BuildOptions, or its fields as keywords (`name=..., size=...`). Raises BuildError (or
    OSError when OUT is not writable) for fatal problems; bad inputs only go to rejects.jsonl.
    Rerunning after a kill resumes; rerunning a finished build returns its manifest.
    """
    opts = options if options is not None else BuildOptions.from_kwargs(kw)
    if options is not None and kw:
        raise TypeError("build_shards: pass a BuildOptions or keywords, not both")
    opts.check()
    _refuse_out_inside_sources(out, sources)
    try:
        inputs = expand(sources, opts.storage_options, opts.duplicate_rows, opts.root, opts.allow_outside_root)
        table = load_metadata(opts.metadata, opts.id_column, opts.storage_options,
                              opts.duplicate_rows) if opts.metadata else None
    except SourceError as e:
        raise BuildError(str(e)) from None
    files = inputs.files
    if not files:
        raise BuildError(f"no input files found under {', '.join(sources)}" + (
            f" ({inputs.skipped.hidden} hidden entries skipped, e.g. {inputs.skipped.examples[0]})"
            if inputs.skipped.hidden else ""))
    csv_sha = dict(inputs.csv_sha256)
    if table is not None:
        csv_sha[table.csv.url] = table.csv.sha256
    # what determines the output bytes (not --workers, --progress, credentials)
    identity = {**opts.identity(), "sources": list(sources), "csv_sha256": csv_sha}
    fingerprint = _fingerprint(identity, files)
    outp, done = _open_output(opts, out, fingerprint, identity)
    if done is not None:
        return done
    rows = [_row_of(f, table, inputs, opts.metadata, sources) for f in files]
    outcomes, shards = _run(opts, outp, files, rows, fingerprint, inputs.refused)
    man = mf.make_manifest(name=opts.name, options=identity, fingerprint=fingerprint, outcomes=outcomes,
                           shards=shards, files=files)
    man["totals"]["skipped_hidden"] = inputs.skipped.hidden
    man["totals"]["skipped_system"] = inputs.skipped.system
    man["skipped_examples"] = inputs.skipped.examples
    man["metadata"] = _coverage(files, rows, table, inputs, outcomes)
    outp.write_bytes("rejects.jsonl", mf.rejects_jsonl(outcomes).encode())
    if opts.dedup:
        outp.write_bytes("duplicates.jsonl", mf.duplicates_jsonl(outcomes).encode())
    outp.write_bytes("manifest.json", mf.dumps(man).encode())
    outp.remove(STATE_DIR)
    outp.cleanup_staging()
    if opts.progress:
        for line in mf.warnings(man):
            print(f"warning: {line}", file=sys.stderr)
        print("\n".join(mf.summary_lines(man, rejects_location(outp))))
    return man


def rejects_location(outp: Output) -> str:
    """Where a build's rejects.jsonl is, as the user would open it (path, or URL on object stores)."""
    return outp.url_of("rejects.jsonl") if outp.remote else outp.path("rejects.jsonl")


def _row_of(src: str, table: MetadataTable | None, inputs: Inputs, metadata: str | None,
            sources: list[str]) -> tuple[dict | None, str | None]:
    """(metadata row, the CSV it came from: mask paths are relative to it) for one input."""
    row = table.lookup(src) if table is not None else None
    if row is not None:
        return row, table.csv.url
    row = inputs.metadata.get(src)
    return row, None if row is None else _listing_csv(sources)


def _run(opts: BuildOptions, outp: Output, files: list[str], rows: list, fingerprint: str,
         refused: dict[str, str]) -> tuple[list, list]:
    """Decode (in parallel), place and write every input; resumes from OUT's checkpoints. The
    `refused` inputs (listing rows outside their root) are rejected here: no worker opens them."""
    finished, replayed, seq = _load_checkpoints(outp, fingerprint)
    if not finished and not replayed:
        stale = [n for n in _own_files(outp, opts.name) if n != STATE_DIR]
        if stale:
            raise BuildError(f"{outp.url} holds files of another build ({stale[0]} ...): pass --overwrite, or choose "
                             "another --out")
    if not outp.remote:
        outp.remove(f"{STATE_DIR}/partial")  # shards being written when the last run died
    replayed_by_i = {o.i: o for o in replayed}
    redo = _needs_redo(replayed, finished, opts)
    todo = [i for i in range(len(files)) if (i not in replayed_by_i or i in redo) and files[i] not in refused]
    results = _decode_all(opts, todo, files, rows)
    bar = _progress_bar(total=len(files), unit="img", desc=f"shards {opts.name}", disable=not opts.progress,
                        dynamic_ncols=True, smoothing=0.1)
    plan = Placement(opts.name, opts.samples_per_shard, opts.dedup)
    outcomes: list[Result] = []
    tally = Counter()
    try:
        with _Assembler(outp, opts.samples_per_shard, finished, fingerprint, seq) as asm:
            for i in range(len(files)):
                if i in replayed_by_i and i not in redo:
                    res = replayed_by_i[i]
                elif files[i] in refused:
                    res = Result.rejected(i, files[i], "outside_root", refused[files[i]])
                else:
                    res = next(results)
                if res.i != i:
                    raise RuntimeError(f"internal: result for input {res.i} arrived at position {i}")
                placed = 0
                for s in res.samples:
                    shard = plan.place(s, res.source)
                    if shard is not None:
                        placed += 1
                        asm.add(shard, s)
                    s.image = s.json = None  # written: only the facts stay in memory
                tally["rejected" if res.status == "rejected" else "written" if placed else "duplicates"] += 1
                outcomes.append(res)
                if i not in replayed_by_i:
                    asm.pending.append(res.outcome())
                bar.update(1)
                if opts.progress and (i % 16 == 0 or i == len(files) - 1):
                    bar.set_postfix(written=tally["written"], rejected=tally["rejected"],
                                    duplicates=tally["duplicates"], refresh=False)
            if next(results, None) is not None:  # also lets the worker pool shut down cleanly
                raise RuntimeError("internal: more results than inputs")
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()  # shuts the worker pool down
    return outcomes, list(asm.finished.values())


def _decode_all(opts: BuildOptions, todo: list[int], files: list[str], rows: list):
    """make_samples of the inputs `todo`, in order: on worker processes (started now, before any
    thread of this process) or, for one worker or one input, here."""
    sopts = _sample_options(opts)
    tasks = ((i, files[i], *rows[i], sopts) for i in todo)
    workers = max(1, opts.workers if opts.workers is not None else (os.cpu_count() or 1))
    if workers > 1 and len(todo) > 1:
        return ordered_map(make_samples, tasks, workers, _crashed, preload=WORKER_MODULES, chunk=TASKS_PER_CHUNK)
    return map(make_samples, tasks)


def _coverage(files: list[str], rows: list, table: MetadataTable | None, inputs: Inputs,
              outcomes: list[Result]) -> dict:
    """How the metadata met the inputs: rows without a file, files without a row, mask files taken
    as inputs, and the values that could not be used (counted per kind, with examples)."""
    have_csv = table is not None or bool(inputs.metadata)
    without_row = [f for f, (row, _) in zip(files, rows) if row is None] if have_csv else []
    out = {"csv": sorted(inputs.csv_sha256) + ([table.csv.url] if table is not None else []),
           "inputs_with_row": len(files) - len(without_row) if have_csv else 0,
           "inputs_without_row": len(without_row), "inputs_without_row_examples": without_row[:5]}
    if table is not None:
        used = {id(row) for row, _ in rows if row is not None}
        unused = [(line, row) for row, line in zip(table.csv.rows, table.csv.lines) if id(row) not in used]
        out["rows"] = len(table.csv.rows)
        out["rows_without_input"] = len(unused)
        out["rows_without_input_examples"] = [
            f"line {line}: {row.get('path') or row.get(table.id_column or '', '')}" for line, row in unused[:5]]
    masks = set()  # the mask files the rows of the inputs name (a dataset root holds both)
    for row, csv_url in rows:
        for p in filter(None, (x.strip() for x in ((row or {}).get("mask_paths") or "").split(";"))):
            masks.add(join_relative(csv_url, p) if csv_url else p)
    as_inputs = [f for f in files if f in masks]
    out["mask_files_as_inputs"] = len(as_inputs)
    out["mask_files_as_inputs_examples"] = as_inputs[:5]
    out["issues"] = mf.metadata_issues(outcomes)
    return out


def _progress_bar(**kw):
    from tqdm.auto import tqdm

    class Bar(tqdm):
        # no monitor thread: a process with threads cannot fork safely, and the builder forks its
        # workers (again after a worker crash, and on every build of a long-lived process)
        monitor_interval = 0

    return Bar(**kw)


def _crashed(task: tuple, error: str) -> Result:
    """The result recorded for an input whose decoder killed the worker process (twice)."""
    return Result.rejected(task[0], task[1], "worker_crash", error)


def _listing_csv(sources: list[str]) -> str | None:
    """The CSV listing (among SOURCE arguments) a file came from, to resolve its mask paths."""
    for s in sources:
        if s.lower().endswith(".csv"):
            return os.path.abspath(s) if "://" not in s else s
    return None
