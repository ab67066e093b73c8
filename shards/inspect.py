"""`shards inspect OUT`: what a shard set holds, from the sample jsons (pixels are not decoded)."""

from __future__ import annotations

import json
import tarfile
from collections import Counter

from shards.storage import Output


def _bucket(n: int) -> str:
    for edge in (64, 128, 256, 512, 1024, 2048):
        if n <= edge:
            return f"<={edge}"
    return ">2048"


def inspect_shards(out: str, storage_options: dict | None = None) -> dict:
    outp = Output(out, storage_options)
    if not outp.exists("manifest.json"):
        raise FileNotFoundError(f"{out}: no manifest.json (not a finished shard set; run `dinotrain shards build`)")
    man = json.loads(outp.read_bytes("manifest.json"))
    by = {k: Counter() for k in ("split", "dataset", "modality", "label", "sex", "view", "bits", "codec", "size", "format")}
    n = with_age = 0
    ages = []
    for rec in man["shards"]:
        with outp.open(rec["path"]) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                if not m.name.endswith(".json"):
                    continue
                meta = json.loads(tf.extractfile(m).read())
                n += 1
                for k in ("split", "dataset", "modality", "view", "bits", "format"):
                    by[k][str(meta.get(k))] += 1
                by["codec"][str(meta.get("codec", "png"))] += 1  # older shard sets: PNG, not recorded
                for lab in meta.get("labels") or ([meta["label"]] if meta.get("label") else ["(none)"]):
                    by["label"][lab] += 1
                by["sex"][meta.get("sex") or "(unknown)"] += 1
                if meta.get("age") is not None:
                    with_age += 1
                    ages.append(float(meta["age"]))
                h, w = meta.get("shape", [0, 0])
                by["size"][f"{_bucket(min(h, w))} short side"] += 1
    ages.sort()
    age = None
    if ages:
        age = {"min": ages[0], "median": ages[len(ages) // 2], "max": ages[-1]}
    return {
        "out": out,
        "samples": n,
        "shards": len(man["shards"]),
        "codec": man.get("codec", "png"),
        "totals": man["totals"],
        "age_coverage": with_age / n if n else 0.0,
        "age": age,
        "sex_coverage": (n - by["sex"].get("(unknown)", 0)) / n if n else 0.0,
        "counts": {k: dict(v.most_common()) for k, v in by.items()},
        "reject_reasons": man.get("reject_reasons", {}),
    }


def format_stats(stats: dict, top: int = 15) -> str:
    t = stats["totals"]
    lines = [
        f"{stats['out']}: {stats['samples']} samples in {stats['shards']} shards of {stats.get('codec', 'png')} "
        f"(inputs {t['inputs']}, written {t['written']}, rejected {t['rejected']}, duplicates {t['duplicates']})",
        f"age known for {stats['age_coverage']:.0%}" + (
            f" (min {stats['age']['min']:g}, median {stats['age']['median']:g}, max {stats['age']['max']:g})"
            if stats["age"] else ""),
        f"sex known for {stats['sex_coverage']:.0%}",
    ]
    n = max(1, stats["samples"])
    for k, counts in stats["counts"].items():
        lines.append("")
        lines.append(f"{k:<28} {'count':>8} {'share':>7}")
        items = list(counts.items())
        for name, c in items[:top]:
            lines.append(f"  {str(name)[:26]:<26} {c:>8} {c / n:>7.1%}")
        if len(items) > top:
            lines.append(f"  ... {len(items) - top} more")
    if stats["reject_reasons"]:
        lines.append("")
        lines.append("rejects: " + ", ".join(f"{k} {v}" for k, v in stats["reject_reasons"].items()))
    return "\n".join(lines)
