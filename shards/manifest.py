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


def make_manifest(*, name: str, codec: str = "png", options: dict, fingerprint: str, outcomes: list[dict], shards: list[dict],
                  files: list[str]) -> dict:
    src = Counter()
    frames = Counter()
    splits, modalities, datasets, reasons = Counter(), Counter(), Counter(), Counter()
    for o in outcomes:
        src["inputs"] += 1
        frames["inputs"] += o.get("frames", 0)
        frames["rejected"] += len(o.get("frame_rejects", []))
        n_written = 0
        for s in o["samples"]:
            if s.get("duplicate"):
                frames["duplicates"] += 1
                continue
            n_written += 1
            splits[s["split"]] += 1
            modalities[s["modality"]] += 1
            datasets[s["dataset"]] += 1
        frames["written"] += n_written
        if o["status"] == "rejected":
            src["rejected"] += 1
            reasons[o["reason"]] += 1
        elif n_written:
            src["written"] += 1
        else:
            src["duplicates"] += 1
    frame_reasons = Counter(fr["reason"] for o in outcomes if o["status"] != "rejected"
                            for fr in o.get("frame_rejects", []))
    order = {s: i for i, s in enumerate(SPLITS)}
    shards = sorted(shards, key=lambda r: (order.get(r["split"], 9), r["split"], r["path"]))
    return {
        "format": FORMAT,
        "name": name,
        "codec": codec,  # every sample's image is KEY.<shards.codecs.extension(codec)>
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


def rejects_jsonl(outcomes: list[dict]) -> str:
    """One line per rejected input (and per rejected frame of an input that was otherwise written)."""
    lines = []
    for o in outcomes:
        if o["status"] == "rejected":
            lines.append({"source": o["source"], "reason": o["reason"], "error": o["error"]})
        else:
            for fr in o.get("frame_rejects", []):
                lines.append({"source": o["source"], "frame": fr["frame"], "reason": fr["reason"], "error": fr["error"]})
    return "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines)


def dumps(man: dict) -> str:
    return json.dumps(man, indent=1, sort_keys=False) + "\n"


def final_line(man: dict) -> str:
    t = man["totals"]
    top = ", ".join(f"{k} {v}" for k, v in sorted(man.get("reject_reasons", {}).items(), key=lambda kv: -kv[1])[:3])
    rej = f"rejected {t['rejected']}" + (f" ({top})" if top else "")
    return f"written {t['written']} ({t['samples']} samples in {len(man['shards'])} shards), {rej}, duplicates {t['duplicates']}"


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
