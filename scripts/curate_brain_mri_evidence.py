"""The README's brain_mri_large curation evidence: groups.jsonl of `dinotrain curate` joined with the
dataset's metadata.csv (source_split, label, group_id). Prints one JSON object.

    dinotrain shards build ../shared/data/brain_mri_large/images --name brain_mri_large --size 256 \\
        --metadata ../shared/data/brain_mri_large/metadata.csv --out bml
    dinotrain curate bml --out bml_curated --target 2000 --levels 200,20,5
    python scripts/curate_brain_mri_evidence.py bml_curated ../shared/data/brain_mri_large
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections import Counter
from pathlib import Path


def evidence(curated: Path, dataset: Path) -> dict:
    with (dataset / "metadata.csv").open(newline="") as f:
        rows = {str((dataset / r["path"]).resolve()): r for r in csv.DictReader(f)}
    groups = [[rows[str(Path(m["source"]).resolve())] for m in json.loads(line)["members"]]
              for line in (curated / "groups.jsonl").read_text().splitlines()]
    spanning = [g for g in groups if {r["source_split"] for r in g} == {"Training", "Testing"}]
    ours = {p for g in groups for p in itertools.combinations(sorted(r["path"] for r in g), 2)}
    by_id: dict[str, list[str]] = {}
    for r in rows.values():
        by_id.setdefault(r["group_id"], []).append(r["path"])
    theirs = {p for paths in by_id.values() for p in itertools.combinations(sorted(paths), 2)}
    return {
        "groups": len(groups), "samples_in_groups": sum(len(g) for g in groups),
        "size_histogram": dict(sorted(Counter(len(g) for g in groups).items())),
        "groups_spanning_training_testing": len(spanning),
        "testing_images_with_a_near_copy_in_training": len({r["path"] for g in spanning for r in g
                                                            if r["source_split"] == "Testing"}),
        "groups_mixing_labels": sum(len({r["label"] for r in g}) > 1 for g in groups),
        "groups_joining_several_group_ids": sum(len({r["group_id"] for r in g}) > 1 for g in groups),
        "pairs_in_our_groups": len(ours), "of_which_share_a_group_id": len(ours & theirs),
        "pairs_in_group_id_groups": len(theirs),
        "group_id_groups_of_2_or_more": sum(len(p) > 1 for p in by_id.values()),
    }


if __name__ == "__main__":
    print(json.dumps(evidence(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
