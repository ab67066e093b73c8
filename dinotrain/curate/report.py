"""What `dinotrain curate` writes beside the selection: groups.jsonl, report.json / report.md, contact sheets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from dinotrain.curate.dedup import Group
from dinotrain.curate.sheets import DROPPED, KEPT, PLAIN, contact_sheet, read_samples, spread_pick
from dinotrain.data.shard_index import _join


def group_records(pool, groups: list[Group], drops: dict[int, str]) -> list[dict]:
    """Every duplicate group with its members (set, shard, key, source), similarity to the kept one, edges."""
    out = []
    for n, g in enumerate(groups):
        members = []
        for m, sim in zip(g.members, g.sim_to_kept):
            e, j = pool.local(m)
            members.append({"sample": pool.name(m), "shard": e.shard[j], "source": e.sources[j],
                            "cos_to_kept": sim, "kept": m == g.kept, "dropped": drops.get(m)})
        out.append({"group": n, "size": len(g.members), "kept": pool.name(g.kept), "members": members,
                    "edges": [[pool.name(a), pool.name(b), c] for a, b, c in g.edges]})
    return out


def summary(pool, groups: list[Group], drops: dict[int, str], clusters: dict | None, meta: dict) -> dict:
    reasons = Counter(r.split(":", 1)[0] for r in drops.values())
    per_set = []
    for s, e in enumerate(pool.sets):
        idx = np.nonzero(pool.set_of == s)[0]
        per_set.append({"name": e.name, "path": e.root, "samples": len(idx),
                        "kept": int(sum(1 for i in idx if int(i) not in drops))})
    sizes = Counter(len(g.members) for g in groups)
    return {**meta, "samples": int(len(pool.vectors)), "kept": int(len(pool.vectors) - len(drops)),
            "dropped": dict(reasons), "sets": per_set,
            "duplicate_groups": {"count": len(groups), "samples_in_groups": sum(len(g.members) for g in groups),
                                 "size_histogram": {str(k): v for k, v in sorted(sizes.items())},
                                 "largest": [len(g.members) for g in groups[:10]]},
            "clusters": None if clusters is None else {k: v for k, v in clusters.items()
                                                       if k not in ("top_members", "drawn_index")}}


def duplicate_sheet(pool, groups: list[Group], drops: dict[int, str], path: Path, rows: int) -> Path:
    shown = groups[:rows]
    wanted = [pool.where(m) for g in shown for m in g.members[:10]]
    images = read_samples(wanted)
    lines = []
    for n, g in enumerate(shown):
        tiles = []
        for m, sim in list(zip(g.members, g.sim_to_kept))[:10]:
            root, shard, key = pool.where(m)
            colour = KEPT if m == g.kept else DROPPED if m in drops else PLAIN
            tiles.append((images[(_join(root, shard), key)], f"{key[:8]} {sim:.3f}", colour))
        lines.append((f"group {n}: {len(g.members)} images (green: kept, red: dropped; cosine to kept)", tiles))
    return contact_sheet(lines, path)


def cluster_sheet(pool, clusters: dict, path: Path, rows: int) -> Path:
    drawn = set(clusters["drawn_index"])
    top = sorted(clusters["top_members"].items(), key=lambda kv: -len(kv[1]))[:rows]
    picks = {c: spread_pick(np.array([m for m in mem if m in drawn], dtype=np.int64), 10) for c, mem in top}
    images = read_samples([pool.where(int(m)) for p in picks.values() for m in p])
    lines = []
    for c, mem in top:
        tiles = []
        for m in picks[c].tolist():
            root, shard, key = pool.where(m)
            tiles.append((images[(_join(root, shard), key)], key[:8], KEPT))
        n_drawn = sum(1 for m in mem if m in drawn)
        lines.append((f"top cluster {c}: {len(mem)} before -> {n_drawn} drawn (a spread of the drawn ones)", tiles))
    return contact_sheet(lines, path)


def markdown(rep: dict) -> str:
    d = rep["duplicate_groups"]
    lines = [f"# Curation report ({rep['encoder']}, threshold {rep['threshold']})", "",
             f"- samples: {rep['samples']}, kept: {rep['kept']}, dropped: {rep['dropped'] or 0}",
             f"- near-duplicate groups: {d['count']} holding {d['samples_in_groups']} samples; "
             f"sizes {d['size_histogram']}; largest {d['largest']}"]
    lines += [f"- set {s['name']} ({s['path']}): {s['samples']} samples, {s['kept']} kept" for s in rep["sets"]]
    for ref, n in rep.get("against", {}).items():
        lines.append(f"- against {ref}: {n} pretraining samples removed as near-duplicates")
    if rep.get("clusters"):
        c = rep["clusters"]
        lines.append(f"- balanced sampling ({c['strategy']}): {c['drawn']} drawn for target {c['target']}")
        for i, lv in enumerate(c["levels"]):
            lines.append(f"  - level {i + 1}: {lv['clusters']} clusters, occupancy entropy {lv['entropy_before']} -> "
                         f"{lv['entropy_after']}; sizes before {lv['sizes_before']}, after {lv['sizes_after']}")
    return "\n".join(lines) + "\n"


def write_report(out: Path, pool, groups, drops, clusters, meta: dict, rows: int) -> dict:
    rep = summary(pool, groups, drops, clusters, meta)
    with (out / "groups.jsonl").open("w") as f:
        for rec in group_records(pool, groups, drops):
            f.write(json.dumps(rec) + "\n")
    if groups:
        rep["sheets"] = [str(duplicate_sheet(pool, groups, drops, out / "duplicates.png", rows))]
    if clusters:
        rep.setdefault("sheets", []).append(str(cluster_sheet(pool, clusters, out / "clusters.png", rows)))
    (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    (out / "report.md").write_text(markdown(rep))
    return rep
