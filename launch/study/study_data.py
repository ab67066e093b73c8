"""The laptop study's data: the eval test images held out, and one pretraining shard set per group.

Held-out rule: every built-in task the study evaluates is loaded exactly as `dinotrain eval`
loads it (`load_task`, same max_samples), and the images of its `test` split are removed from
pretraining, together with every other image of the same patient (the task's group column:
patient_id, lesion_id) in that dataset, and every image of its dataset in the same group as a test
image (`group_images`: near-duplicate slices via brain_mri's group_id, group-mates the task itself
filtered out or did not sample, a joined dataset's slices of the group), and every file that is the
same source file as a held-out one under another dataset folder (`source` + `source_path`:
ham10000_derm is part of ham10000_large, brain_mri of brain_mri_large). Only the image files of a
dataset's metadata.csv are listed (never its mask files), so a dataset root's masks cannot become training images.
"""

from __future__ import annotations

import csv
import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# group -> [(dataset folder, {column: allowed values} or None)]
GROUPS: dict[str, list[tuple[str, dict[str, list[str]] | None]]] = {
    "cxr": [("jsrt", None), ("covid_cxr", {"modality": ["X-ray"]})],
    "derm": [("ham10000_large", None)],  # every lesion's image (ham10000_derm's 690 are among them)
    "us": [("busi_ultrasound", None)],
    "mri": [("brain_mri_large", None)],  # all 3,264 slices (brain_mri is its Testing part)
    "ct": [("covid_cxr", {"modality": ["CT"]})],
}
# the GPU study's pool (launch/study/gpu_study.py): the small sets, whose files fit the 64 MiB a device
# call carries; same groups, ham10000_derm and brain_mri in place of their large sets
SMALL_GROUPS: dict[str, list[tuple[str, dict[str, list[str]] | None]]] = {
    **GROUPS, "derm": [("ham10000_derm", None)], "mri": [("brain_mri", None)]}
PATIENT_COLUMNS = ("patient_id", "lesion_id", "group_id")  # what the built-in specs group by, per dataset
LISTING_COLUMNS = ("path", "dataset", "modality", "patient_id", "age", "sex", "view")


@dataclass
class HeldOut:
    """Test images (absolute paths), test patients (dataset -> column -> ids), the other images of
    test groups, and the source files of all of them, of the eval tasks."""

    images: set[str] = field(default_factory=set)
    patients: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    per_task: dict[str, int] = field(default_factory=dict)
    group_images: set[str] = field(default_factory=set)  # other images of a test image's group
    source_files: set[tuple[str, str]] = field(default_factory=set)  # (source, source_path) of all held out

    def add_source(self, row: dict[str, str]) -> None:
        key = _source_key(row)
        if all(key):
            self.source_files.add(key)

    def excludes(self, dataset: str, image: str, row: dict[str, str]) -> bool:
        if image in self.images or image in self.group_images or _source_key(row) in self.source_files:
            return True
        for column, ids in self.patients.get(dataset, {}).items():
            if (row.get(column) or "").strip() in ids:
                return True
        return False


def _source_key(row: dict[str, str]) -> tuple[str, str]:
    return (row.get("source") or "").strip(), (row.get("source_path") or "").strip()


def held_out(tasks: list[str], data_root: str | Path, max_samples: int | None) -> HeldOut:
    """The test split of every task, as `dinotrain eval` builds it."""
    from dinotrain.eval.specs import image_rows, load_spec, load_task

    out = HeldOut()
    for name in tasks:
        spec = load_spec(name)
        task = load_task(spec, data_root, max_samples)
        test = task.indices("test")
        out.per_task[spec.name] = int(len(test))
        for i in test:
            image = task.images[i]
            if not isinstance(image, str):
                continue  # arrays inside an .npz: never a pretraining file here
            out.images.add(str(Path(image).resolve()))
            out.add_source(task.rows[i])
            if spec.group_column:
                pid = (task.rows[i].get(spec.group_column) or "").strip()
                if pid:
                    out.patients[spec.dataset][spec.group_column].add(pid)
        test_groups = {(task.rows[i].get(spec.group_column) or "").strip() for i in test} - {""}
        for path, row in image_rows(spec, data_root).items():
            if (row.get(spec.group_column) or "").strip() in test_groups:
                out.group_images.add(str(Path(path).resolve()))
                out.add_source(row)
    out.group_images -= out.images
    return out


def _rows(data_root: Path, dataset: str) -> list[dict[str, str]]:
    meta = data_root / dataset / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: point --data (or DINOTRAIN_TEST_DATA) at the folder holding "
                                f"{dataset}/ (see shared/data/README.md)")
    with meta.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def group_listing(group: str, data_root: str | Path, hold: HeldOut, limit: int | None = None,
                  groups: dict | None = None) -> list[dict[str, str]]:
    """The pretraining rows of one group (of `groups`, default GROUPS): metadata image paths (absolute),
    minus the held-out ones.

    `limit` keeps N rows evenly spaced in path order (shrunk runs), no seed involved."""
    data_root = Path(data_root).resolve()
    out = []
    for dataset, where in (groups or GROUPS)[group]:
        for row in _rows(data_root, dataset):
            if where and any((row.get(c) or "") not in v for c, v in where.items()):
                continue
            image = str((data_root / dataset / row["path"]).resolve())
            if hold.excludes(dataset, image, row):
                continue
            patient = next((row[c] for c in PATIENT_COLUMNS if (row.get(c) or "").strip()), "")
            out.append({"path": image, "dataset": dataset, "modality": row.get("modality", ""),
                        "patient_id": patient, "age": row.get("age", ""), "sex": row.get("sex", ""),
                        "view": row.get("view", "")})
    out.sort(key=lambda r: r["path"])
    if limit is not None and limit < len(out):
        # evenly spaced through the sorted rows: every dataset of the group keeps its share
        step = len(out) / limit
        out = [out[int(i * step)] for i in range(limit)]
    return out


def write_listing(rows: list[dict[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(LISTING_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return path


def build_group(listing: Path, out: Path, group: str, size: int, workers: int | None, progress: bool,
                root: str | Path) -> int:
    """Shards of one group (8-bit grayscale, shorter side `size`) from a listing of paths under `root`
    (the data folder: the listing lives in the study's output); returns the samples written."""
    from shards.build import BuildOptions, build_shards

    opts = BuildOptions(name=group, size=size, bits=8, channels=1, workers=workers, progress=progress,
                        root=str(Path(root).resolve()))
    man = build_shards([str(listing)], str(out), opts)
    return int(man["totals"]["written"])


def shard_sources(shard_dir: str | Path) -> list[str]:
    """The `source` path of every sample in a local shard set (read back from the tars' json)."""
    sources = []
    for tar in sorted(Path(shard_dir).glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t:
                if m.name.endswith(".json"):
                    f = t.extractfile(m)
                    if f is not None:
                        sources.append(str(Path(json.loads(f.read())["source"]).resolve()))
    return sources


def prepare(data_root: str | Path, out: Path, hold: HeldOut, size: int, limit: int | None = None,
            workers: int | None = None, progress: bool = True, groups: dict | None = None) -> dict:
    """Listings and shards for every group, without the held-out images; returns the record kept
    in study.json. The shards are read back and checked against the held-out images: a leak fails
    the study."""
    record: dict = {"groups": {}, "held_out_images": len(hold.images), "held_out_per_task": hold.per_task,
                    "held_out_group_images": len(hold.group_images),
                    "held_out_patients": {d: {c: len(v) for c, v in cols.items()} for d, cols in hold.patients.items()}}
    for group in groups or GROUPS:
        rows = group_listing(group, data_root, hold, limit, groups)
        if not rows:
            raise RuntimeError(f"group '{group}': no pretraining images left under {data_root} after holding out "
                               "the eval test splits")
        listing = write_listing(rows, out / "lists" / f"{group}.csv")
        n = build_group(listing, out / "shards" / group, group, size, workers, progress, data_root)
        leaked = sorted(set(shard_sources(out / "shards" / group)) & (hold.images | hold.group_images))
        if leaked:
            raise RuntimeError(f"group '{group}': {len(leaked)} eval test image(s) in the pretraining shards "
                               f"(e.g. {leaked[0]}): the held-out rule is broken")
        record["groups"][group] = {"images": n, "path": str(out / "shards" / group),
                                   "datasets": sorted({r["dataset"] for r in rows}),
                                   "held_out_images_found": len(leaked)}
    return record


def task_images(tasks: list[str], data_root: str | Path, max_samples: int | None) -> int:
    """Distinct images the evaluation of `tasks` reads (the plan's eval time)."""
    from dinotrain.eval.specs import load_spec, load_task

    keys: set[str] = set()
    for name in tasks:
        keys.update(load_task(load_spec(name), data_root, max_samples).keys)
    return len(keys)


def near_duplicate_holdout(data: dict, tasks: list[str], data_root: str | Path, out: Path) -> dict:
    """Pool samples that near-duplicate a test image of `tasks` (`dinotrain curate --against`'s
    rule: its pixel embedding and calibrated threshold), as a selection every run's sources carry:
    the group ids catch the near-duplicates the datasets name, this catches the ones they do not.
    Only those samples are dropped (no deduplication within the pool: that is the curated arm's).
    Returns the record kept in study.json's `data`."""
    from dinotrain.curate.embed import embed_set, make_encoder
    from dinotrain.curate.run import CurateOptions, Pool, cache_for, drop_against, selection_doc, threshold_of

    roots = [data["groups"][g]["path"] for g in data["groups"]]
    opts = CurateOptions(shards=roots, out=str(out), against=list(tasks), data=str(data_root))
    encoder = make_encoder(opts.encoder, opts.resolution, opts.threads, opts.device)
    quiet = lambda _line: None  # noqa: E731 (the study prints one line for the whole step)
    pool = Pool.of([embed_set(r, encoder, cache_for(r, opts), quiet) for r in roots])
    drops, per_task = drop_against(pool, opts.against, encoder, opts, threshold_of(opts), quiet)
    path = out / "heldout_selection.json"
    path.write_text(json.dumps(selection_doc(pool, drops, "dinotrain study (held-out near-duplicates)")) + "\n")
    by_group = {g: 0 for g in data["groups"]}
    for i in drops:
        by_group[list(data["groups"])[int(pool.set_of[i])]] += 1
    return {"heldout_selection": str(path), "near_duplicates": {
        "encoder": encoder.id, "threshold": threshold_of(opts), "dropped": len(drops), "per_group": by_group,
        "per_task": {t: int(n) for t, n in per_task.items()}}}
