"""One input file -> its samples (image + JSON bytes) or a reject. Runs in the worker processes.

`make_samples` is a pure function of (source bytes, metadata row, options): the parent decides
only what depends on the order of inputs (duplicates, which shard a sample goes to).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from shards import codecs, keys
from shards.process import ProcessOptions, pixel_sha256, render
from shards.readers import Decoded, ReadOptions, Reject, parse_age, read
from shards.storage import read_bytes

# metadata columns with a meaning of their own; every other non-empty column goes to "meta"
KNOWN_COLUMNS = {"path", "label", "labels", "labels_all", "age", "sex", "view", "modality", "report_text",
                 "report", "mask_paths", "dataset"}


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

    def as_dict(self) -> dict:
        return asdict(self)


def _sex(v) -> str | None:
    if v is None:
        return None
    t = str(v).strip().upper()
    if not t:
        return None
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(t, t)


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


def describe(source: str, row: dict | None, tags: dict, opts: SampleOptions, csv_path: str | None) -> dict:
    """The per-source part of the sample json: ids, demographics, labels, joined metadata."""
    row = row or {}
    patient = (row.get(opts.patient_column) or "").strip() or tags.get("patient_id") or source
    phash = keys.patient_hash(patient, opts.split_salt)
    age = parse_age(row["age"]) if (row.get("age") or "").strip() else tags.get("age")
    if isinstance(age, float) and not math.isfinite(age):
        age = None
    modality = opts.modality or (row.get("modality") or "").strip() or tags.get("modality") or "unknown"
    meta = {k: v for k, v in row.items() if k and k not in KNOWN_COLUMNS and k != opts.patient_column
            and v not in (None, "")}
    info = {
        "dataset": (row.get("dataset") or "").strip() or opts.name,
        "modality": modality,
        "split": keys.assign_split(phash, opts.val_fraction, opts.test_fraction),
        "source": source,
        "patient": phash,
        "patient_id_from": "metadata" if (row.get(opts.patient_column) or "").strip()
        else "dicom" if tags.get("patient_id") else "path",
        "age": age,
        "sex": _sex(row.get("sex")) or _sex(tags.get("sex")),
        "view": (row.get("view") or "").strip() or tags.get("view"),
        "labels": _labels(row),
        "label": (row.get("label") or "").strip() or None,
        "report": (row.get("report_text") or row.get("report") or "").strip() or None,
        "masks": _mask_paths(row, csv_path),
        "body_part": tags.get("body_part"),
        "meta": meta,
    }
    return info


def _output_bits(decoded: Decoded, opts: ProcessOptions) -> int:
    if opts.bits is not None:
        return opts.bits
    return 16 if decoded.source_bits > 8 else 8


def make_samples(task: tuple) -> dict:
    """Worker entry: (index, source, metadata row, csv path of the row, SampleOptions) -> result dict."""
    i, source, row, csv_path, opts = task
    result = {"i": i, "source": source, "status": "ok", "samples": [], "frame_rejects": [], "frames": 0}
    try:
        try:
            data = read_bytes(source)
        except OSError as e:
            raise Reject("read_error", f"{type(e).__name__}: {e}") from None
        decoded = read(data, source, opts.read)
        if not decoded.frames:
            raise Reject("no_pixel_data", f"{decoded.format} file with {decoded.frame_count} frames")
    except Reject as r:
        result.update(status="rejected", reason=r.reason, error=r.error)
        return result
    except Exception as e:  # noqa: BLE001 - a reader bug on one odd file must not stop the build
        result.update(status="rejected", reason="decode_error", error=f"{type(e).__name__}: {e}")
        return result
    base = describe(source, row, decoded.tags, opts, csv_path)
    bits = _output_bits(decoded, opts.process)
    result["frames"] = len(decoded.frames)
    spacing = decoded.tags.get("spacing")
    for fr in decoded.frames:
        try:
            src_sha = hashlib.sha256(
                f"{fr.pixels.dtype.str}{fr.pixels.shape}".encode() + fr.pixels.tobytes()
            ).hexdigest() if opts.hash_source else None
            out = render(fr, opts.process, bits)
            image = codecs.encode(out, opts.process.codec, opts.process.compress_level)
        except Reject as r:
            result["frame_rejects"].append({"frame": fr.index, "reason": r.reason, "error": r.error})
            continue
        except Exception as e:  # noqa: BLE001
            result["frame_rejects"].append({"frame": fr.index, "reason": "process_error",
                                            "error": f"{type(e).__name__}: {e}"})
            continue
        h0, w0 = fr.pixels.shape[:2]
        h1, w1 = out.shape[:2]
        key = keys.sample_key(source, fr.index)
        sha = pixel_sha256(out)
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
        result["samples"].append({
            "key": key, "frame": fr.index, "split": base["split"], "src_sha": src_sha, "sha256": sha,
            "modality": base["modality"], "dataset": base["dataset"],
            "ext": codecs.extension(opts.process.codec), "image": image, "json": js,
        })
    if not result["samples"]:
        result.update(status="rejected", reason=result["frame_rejects"][0]["reason"] if result["frame_rejects"]
                      else "no_pixel_data", error="no frame could be processed")
    return result
