"""manifest.json and rejects.jsonl from the per-input outcomes of a build (pure functions)."""

from __future__ import annotations

import json
from collections import Counter

from shards.keys import SPLITS

FORMAT = "dinotrain-shards/1"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("dinotrain", "numpy", "pillow", "pydicom", "nibabel", "scipy", "pylibjpeg", "pylibjpeg-libjpeg",
                "pylibjpeg-openjpeg", "pylibjpeg-rle"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _sorted_counts(c: Counter) -> dict:
    return {k: c[k] for k in sorted(c, key=str)}


def make_manifest(*, name: str, options: dict, fingerprint: str, outcomes: list, shards: list[dict],
                  files: list[str]) -> dict:
    """`outcomes`: one shards.samples.Result per input, in input order (duplicates already marked)."""
    src = Counter()
    frames = Counter()
    splits, modalities, datasets, reasons = Counter(), Counter(), Counter(), Counter()
    for o in outcomes:
        src["inputs"] += 1
        frames["inputs"] += o.frames
        frames["rejected"] += len(o.frame_rejects)
        n_written = 0
        for s in o.samples:
            if s.duplicate_of is not None:
                frames["duplicates"] += 1
                continue
            n_written += 1
            splits[s.split] += 1
            modalities[s.modality] += 1
            datasets[s.dataset] += 1
        frames["written"] += n_written
        if o.status == "rejected":
            src["rejected"] += 1
            reasons[o.reason] += 1
        elif n_written:
            src["written"] += 1
        else:
            src["duplicates"] += 1
    frame_reasons = Counter(fr["reason"] for o in outcomes if o.status != "rejected" for fr in o.frame_rejects)
    order = {s: i for i, s in enumerate(SPLITS)}
    shards = sorted(shards, key=lambda r: (order.get(r["split"], 9), r["split"], r["path"]))
    return {
        "format": FORMAT,
        "name": name,
        "codec": options.get("codec", "png"),  # every sample's image is KEY.<shards.codecs.extension(codec)>
        "fingerprint": fingerprint,
        "shards": shards,
        "totals": {
            "inputs": src["inputs"],
            "written": src["written"],
            "rejected": src["rejected"],
            "duplicates": src["duplicates"],
            "samples": frames["written"],
            "frames": {k: frames[k] for k in ("inputs", "written", "rejected", "duplicates")},
        },
        "splits": _sorted_counts(splits),
        "modalities": _sorted_counts(modalities),
        "datasets": _sorted_counts(datasets),
        "reject_reasons": _sorted_counts(Counter({k: v for k, v in reasons.items() if v})),
        "frame_reject_reasons": _sorted_counts(frame_reasons),
        "options": options,
        "versions": _versions(),
    }


MAX_VALUES = 20  # distinct raw values kept per metadata issue (the counts are complete)


def metadata_issues(outcomes: list) -> dict:
    """{"age_unparsed": {"inputs": n, "values": {"abc": 2, ...}}, "sex_unknown_code": ...}: the metadata
    values that could not be used (stored as null, the raw value kept in the sample's json)."""
    out: dict[str, dict] = {}
    for o in outcomes:
        for note in o.notes:
            entry = out.setdefault(f"{note['field']}_{note['issue']}", {"inputs": 0, "values": Counter()})
            entry["inputs"] += 1
            if note["value"] in entry["values"] or len(entry["values"]) < MAX_VALUES:
                entry["values"][note["value"]] += 1
    return {k: {"inputs": v["inputs"], "values": dict(v["values"].most_common())} for k, v in sorted(out.items())}


def rejects_jsonl(outcomes: list) -> str:
    """One line per rejected input (and per rejected frame of an input that was otherwise written)."""
    lines = []
    for o in outcomes:
        if o.status == "rejected":
            lines.append({"source": o.source, "reason": o.reason, "error": o.error})
        else:
            for fr in o.frame_rejects:
                lines.append({"source": o.source, "frame": fr["frame"], "reason": fr["reason"], "error": fr["error"]})
    return "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines)


def duplicates_jsonl(outcomes: list) -> str:
    """With --dedup: one line per dropped frame, naming the frame it duplicates (kept in a shard)."""
    lines = [{"source": o.source, "frame": s.frame, "duplicate_of": s.duplicate_of[0],
              "duplicate_of_frame": s.duplicate_of[1]}
             for o in outcomes for s in o.samples if s.duplicate_of is not None]
    return "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines)


def dumps(man: dict) -> str:
    return json.dumps(man, indent=1, sort_keys=False) + "\n"


def final_line(man: dict) -> str:
    t = man["totals"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(man.get("reject_reasons", {}).items(),
                                                       key=lambda kv: (-kv[1], kv[0])))
    rej = f"rejected {t['rejected']}" + (f" ({reasons})" if reasons else "")
    hidden = f", skipped hidden {t['skipped_hidden']}" if t.get("skipped_hidden") else ""
    return (f"written {t['written']} ({t['samples']} samples in {len(man['shards'])} shards), {rej}, "
            f"duplicates {t['duplicates']}{hidden}")


def rejects_line(man: dict, rejects_path: str) -> str | None:
    """Where the rejects are listed, and how many (None when there are none)."""
    inputs = man["totals"]["rejected"]
    frames = sum(man.get("frame_reject_reasons", {}).values())
    if not inputs and not frames:
        return None
    what = " and ".join(x for x in (f"{inputs} rejected inputs" if inputs else "",
                                    f"{frames} rejected frames" if frames else "") if x)
    return f"{what}, each with its reason, are listed in {rejects_path}"


def summary_lines(man: dict, rejects_path: str) -> list[str]:
    """What a build prints on stdout at its end: where the rejects are, then the totals line."""
    return [x for x in (rejects_line(man, rejects_path), final_line(man)) if x is not None]


# reject reasons a user can act on by an option: (what happened, the fix)
_REASON_FIX = {
    "outside_root": ("listing rows name files outside the listing's root and were not read",
                     "pass --root FOLDER (or --allow-outside-root) if they are meant"),
    "too_many_pixels": ("inputs have more pixels than --max-pixels and were not decoded",
                        "raise --max-pixels to build them"),
}

_ISSUE_TEXT = {"age_unparsed": "ages not understood", "age_implausible": "implausible ages (below 0 or above 125)",
               "sex_unknown_code": "sex codes not understood"}


def warnings(man: dict) -> list[str]:
    """What a user should look at, one line each (the counts are in the manifest too)."""
    out = []
    t, meta = man["totals"], man.get("metadata", {})
    if t["written"] == 0:
        out.append(f"nothing was written: all {t['inputs']} inputs were rejected or duplicates (see rejects.jsonl)")
    if meta.get("mask_files_as_inputs"):
        out.append(f"{meta['mask_files_as_inputs']} input files are masks named in the metadata's mask_paths "
                   f"(e.g. {meta['mask_files_as_inputs_examples'][0]}): they are built as images; give the "
                   "images folder or a CSV listing as SOURCE instead of the dataset root")
    if meta.get("rows_without_input"):
        out.append(f"{meta['rows_without_input']} of {meta['rows']} metadata rows match no input file "
                   f"(e.g. {meta['rows_without_input_examples'][0]})")
    if meta.get("inputs_without_row"):
        out.append(f"{meta['inputs_without_row']} input files have no metadata row "
                   f"(e.g. {meta['inputs_without_row_examples'][0]})")
    for reason, (what, fix) in _REASON_FIX.items():
        if man.get("reject_reasons", {}).get(reason):
            out.append(f"{man['reject_reasons'][reason]} {what} ({reason}): {fix}")
    for kind, entry in meta.get("issues", {}).items():
        values = ", ".join(f"{v!r} x{n}" for v, n in list(entry["values"].items())[:5])
        hint = ": map codes with --sex-map, e.g. --sex-map 1=M,2=F" if kind == "sex_unknown_code" else ""
        out.append(f"metadata: {entry['inputs']} inputs with {_ISSUE_TEXT.get(kind, kind)} ({values}), "
                   f"stored as null{hint}")
    return out


def read_manifest(out: str, storage_options: dict | None = None) -> dict:
    """manifest.json of a finished shard set (local folder or s3:// prefix)."""
    from shards.storage import Output

    outp = Output(out, storage_options)
    if not outp.exists("manifest.json"):
        raise FileNotFoundError(f"{out}: no manifest.json: not a finished shard set (run `dinotrain shards build`, "
                                "which resumes an interrupted build)")
    return json.loads(outp.read_bytes("manifest.json"))


def shard_list(out: str, split: str = "train", storage_options: dict | None = None) -> list[dict]:
    """Shards of one split, in order: [{"tar", "idx" (full paths/URLs), "samples", "sha256"}]."""
    from shards.storage import Output

    outp = Output(out, storage_options)
    man = read_manifest(out, storage_options)
    return [{"tar": outp.url_of(s["path"]) if outp.remote else outp.path(s["path"]),
             "idx": outp.url_of(s["index"]) if outp.remote else outp.path(s["index"]),
             "samples": s["samples"], "sha256": s["sha256"]}
            for s in man["shards"] if s["split"] == split]
