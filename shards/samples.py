"""One input file -> its samples (image + JSON bytes) or a reject. Runs in the worker processes.

`make_samples` is a pure function of (source bytes, metadata row, options): the parent decides
only what depends on the order of inputs (duplicates, which shard a sample goes to).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field

from shards import codecs, keys
from shards.demographics import age_value, sex_value
from shards.process import ProcessOptions, pixel_sha256, render
from shards.readers import Decoded, ReadOptions, Reject, read
from shards.storage import filesystem, is_remote, read_bytes, strip_file

# metadata columns with a meaning of their own; every other non-empty column goes to "meta"
KNOWN_COLUMNS = {"path", "label", "labels", "labels_all", "age", "sex", "view", "modality", "report_text",
                 "report", "mask_paths", "dataset"}


MIN_SIZE = 8  # default --min-size: below, an "image" is an icon, a placeholder or a broken header


@dataclass(frozen=True)
class SampleOptions:
    name: str
    read: ReadOptions = field(default_factory=ReadOptions)
    process: ProcessOptions = field(default_factory=ProcessOptions)
    modality: str | None = None
    patient_column: str = "patient_id"
    split_salt: str = "dinotrain"
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    hash_source: bool = False  # sha256 of the decoded source pixels, for --dedup
    min_size: int = MIN_SIZE  # frames with a shorter side below this are rejected (too_small)
    max_bytes: int | None = None  # files larger than this are rejected before reading (file_too_large)
    sex_map: tuple[tuple[str, str], ...] = ()  # (CODE, M|F|O|U) pairs from --sex-map

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    """One encoded frame; `image`/`json` are dropped once written (checkpoints keep the rest)."""

    key: str
    frame: int
    split: str
    src_sha: str | None
    sha256: str
    modality: str
    dataset: str
    ext: str = "png"  # tar member extension of `image`: shards.codecs.extension(codec)
    image: bytes | None = None
    json: bytes | None = None
    duplicate_of: tuple[str, int] | None = None  # (source, frame) of the first copy; set by the parent


@dataclass
class Result:
    """What a worker returns for one input: its samples, or the reason it was rejected."""

    i: int
    source: str
    status: str = "ok"  # ok | rejected
    samples: list[Sample] = field(default_factory=list)
    frame_rejects: list[dict] = field(default_factory=list)  # {"frame", "reason", "error"}
    frames: int = 0
    reason: str | None = None
    error: str | None = None
    notes: list[dict] = field(default_factory=list)  # metadata values not understood: {"field", "issue", "value"}

    @classmethod
    def rejected(cls, i: int, source: str, reason: str, error: str) -> Result:
        return cls(i, source, status="rejected", reason=reason, error=error)

    def outcome(self) -> dict:
        """JSON-able, without pixels: what a checkpoint records."""
        d = asdict(self)
        for s in d["samples"]:
            del s["image"], s["json"]
        return d

    @classmethod
    def from_outcome(cls, d: dict) -> Result:
        samples = [Sample(**{**s, "duplicate_of": tuple(s["duplicate_of"]) if s.get("duplicate_of") else None})
                   for s in d["samples"]]
        return cls(**{**d, "samples": samples})


def _note(notes: list[dict], name: str, issue: str | None, value) -> None:
    if issue is not None:
        notes.append({"field": name, "issue": issue, "value": str(value).strip()})


def _labels(row: dict) -> list[str]:
    for col in ("labels", "labels_all"):
        v = (row.get(col) or "").strip()
        if v:
            sep = "|" if "|" in v else ";"
            return [x.strip() for x in v.split(sep) if x.strip()]
    v = (row.get("label") or "").strip()
    return [v] if v else []


def _mask_paths(row: dict, source_of_row: str | None) -> list[str]:
    v = (row.get("mask_paths") or "").strip()
    if not v:
        return []
    parts = [x.strip() for x in v.split(";") if x.strip()]
    if source_of_row is None:
        return parts
    from shards.sources import join_relative

    return [join_relative(source_of_row, p) for p in parts]


def _demographics(row: dict, tags: dict, opts: SampleOptions, notes: list[dict]) -> dict:
    """age (years) and sex (M/F/O) from the metadata row, else the DICOM tags; raw values kept when
    they could not be used (`age_raw`, `sex_raw`), and each such value noted for the build's summary."""
    out = {}
    raw_age = row.get("age") if (row.get("age") or "").strip() else tags.get("age_raw")
    age, issue = age_value(raw_age)
    _note(notes, "age", issue, raw_age)
    out["age"] = age
    if issue:
        out["age_raw"] = str(raw_age).strip()
    sex_map = dict(opts.sex_map)
    sex = None
    for raw in (row.get("sex"), tags.get("sex")):
        value, issue = sex_value(raw, sex_map)
        _note(notes, "sex", issue, raw)
        if issue:
            out["sex_raw"] = str(raw).strip()
        if value is not None:
            sex = value
            break
    out["sex"] = sex
    return out


def describe(source: str, row: dict | None, tags: dict, opts: SampleOptions, csv_path: str | None,
             notes: list[dict] | None = None) -> dict:
    """The per-source part of the sample json: ids, demographics, labels, joined metadata."""
    row = row or {}
    notes = [] if notes is None else notes
    patient = (row.get(opts.patient_column) or "").strip() or tags.get("patient_id") or source
    phash = keys.patient_hash(patient, opts.split_salt)
    modality = opts.modality or (row.get("modality") or "").strip() or tags.get("modality") or "unknown"
    meta = {k: v for k, v in row.items() if k and k not in KNOWN_COLUMNS and k != opts.patient_column
            and v not in (None, "")}
    demo = _demographics(row, tags, opts, notes)
    info = {
        "dataset": (row.get("dataset") or "").strip() or opts.name,
        "modality": modality,
        "split": keys.assign_split(phash, opts.val_fraction, opts.test_fraction),
        "source": source,
        "patient": phash,
        "patient_id_from": "metadata" if (row.get(opts.patient_column) or "").strip()
        else "dicom" if tags.get("patient_id") else "path",
        "age": demo.pop("age"),
        "sex": demo.pop("sex"),
        "view": (row.get("view") or "").strip() or tags.get("view"),
        "labels": _labels(row),
        "label": (row.get("label") or "").strip() or None,
        "report": (row.get("report_text") or row.get("report") or "").strip() or None,
        "masks": _mask_paths(row, csv_path),
        "body_part": tags.get("body_part"),
        "meta": meta,
        **demo,  # age_raw / sex_raw, only when a value could not be used
    }
    return info


def _output_bits(decoded: Decoded, opts: ProcessOptions) -> int:
    if opts.bits is not None:
        return opts.bits
    return 16 if decoded.source_bits > 8 else 8


_FILE_TYPES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _not_regular(path: str, mode: int) -> Reject:
    kind = next((what for test, what in _FILE_TYPES if test(mode)), "not a regular file")
    via = f" (through the symlink {path} -> {os.path.realpath(path)})" if os.path.islink(path) else ""
    return Reject("not_a_regular_file", f"{kind}{via}: only regular files are read")


def read_source(source: str, max_bytes: int | None = None) -> bytes:
    """The bytes of one input; a local input that is not a regular file (FIFO, device, socket; also
    through a symlink) or is larger than `max_bytes` is rejected before any byte is read: a FIFO
    would block the build forever, /dev/zero would fill the memory."""
    if is_remote(source):
        if max_bytes is not None:
            fs, path = filesystem(source)
            if fs.size(path) > max_bytes:
                raise Reject("file_too_large", f"{fs.size(path)} bytes, over --max-file-mb ({max_bytes} bytes)")
        return read_bytes(source)
    path = strip_file(source)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    if max_bytes is not None and st.st_size > max_bytes:
        raise Reject("file_too_large", f"{st.st_size} bytes, over --max-file-mb ({max_bytes} bytes)")
    # O_NONBLOCK: should the path have become a FIFO since the stat, opening it does not wait
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise Reject("file_too_large", f"more than --max-file-mb ({max_bytes} bytes) (it grew while read)")
    return data


def _decode(source: str, opts: SampleOptions) -> Decoded:
    """read + decode one input, every failure a Reject with its reason."""
    try:
        try:
            data = read_source(source, opts.max_bytes)
        except OSError as e:
            raise Reject("read_error", f"{type(e).__name__}: {e}") from None
        decoded = read(data, source, opts.read)
        if not decoded.frames:
            raise Reject("no_pixel_data", f"{decoded.format} file with {decoded.frame_count} frames")
        return decoded
    except Reject:
        raise
    except Exception as e:  # noqa: BLE001 - a reader bug on one odd file must not stop the build
        raise Reject("decode_error", f"{type(e).__name__}: {e}") from None


def _frame_sample(fr, decoded: Decoded, base: dict, source: str, bits: int, opts: SampleOptions) -> Sample:
    """One frame -> Sample (image + JSON bytes); raises Reject for a frame that cannot be used."""
    h0, w0 = fr.pixels.shape[:2]
    if opts.min_size and min(h0, w0) < opts.min_size:
        raise Reject("too_small", f"{h0}x{w0} pixels, below --min-size {opts.min_size}")
    src_sha = hashlib.sha256(
        f"{fr.pixels.dtype.str}{fr.pixels.shape}".encode() + fr.pixels.tobytes()
    ).hexdigest() if opts.hash_source else None
    out = render(fr, opts.process, bits)
    image = codecs.encode(out, opts.process.codec, opts.process.compress_level)
    h1, w1 = out.shape[:2]
    key = keys.sample_key(source, fr.index)
    sha = pixel_sha256(out)
    spacing = decoded.tags.get("spacing")
    meta = dict(base)
    meta.update({
        "key": key,
        "frame": fr.index,
        "frames_in_source": decoded.frame_count,
        "format": decoded.format,
        "original_shape": [h0, w0],
        "shape": [h1, w1],
        "channels": 1 if out.ndim == 2 else out.shape[2],
        "original_spacing": spacing,
        "spacing": [spacing[0] * h0 / h1, spacing[1] * w0 / w1] if spacing and len(spacing) == 2 else None,
        "window": fr.window,
        "inverted": fr.invert,
        "bits": bits,
        "codec": opts.process.codec,
        "source_bits": decoded.source_bits,
        "sha256": sha,
    })
    js = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str).encode()
    return Sample(key=key, frame=fr.index, split=base["split"], src_sha=src_sha, sha256=sha,
                  modality=base["modality"], dataset=base["dataset"],
                  ext=codecs.extension(opts.process.codec), image=image, json=js)


def make_samples(task: tuple) -> Result:
    """Worker entry: (index, source, metadata row, csv path of the row, SampleOptions) -> Result."""
    i, source, row, csv_path, opts = task
    try:
        decoded = _decode(source, opts)
    except Reject as r:
        return Result.rejected(i, source, r.reason, r.error)
    result = Result(i, source, frames=len(decoded.frames))
    try:
        base = describe(source, row, decoded.tags, opts, csv_path, result.notes)
    except Exception as e:  # noqa: BLE001 - one odd name or row must not stop the build
        return Result.rejected(i, source, "metadata_error", f"{type(e).__name__}: {e}")
    bits = _output_bits(decoded, opts.process)
    for fr in decoded.frames:
        try:
            result.samples.append(_frame_sample(fr, decoded, base, source, bits, opts))
        except Reject as r:
            result.frame_rejects.append({"frame": fr.index, "reason": r.reason, "error": r.error})
        except Exception as e:  # noqa: BLE001
            result.frame_rejects.append({"frame": fr.index, "reason": "process_error",
                                         "error": f"{type(e).__name__}: {e}"})
    if not result.samples:
        result.status = "rejected"
        result.reason = result.frame_rejects[0]["reason"] if result.frame_rejects else "no_pixel_data"
        result.error = result.frame_rejects[0]["error"] if len(result.frame_rejects) == 1 \
            else "no frame could be processed"
    return result
