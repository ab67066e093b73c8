"""Task specs: small YAML files that say which images, which target and which split.

A spec names a folder under the `--data` root that holds images and a `metadata.csv` (the
../shared/data convention: `path`, `label`, `labels_all`, `age`, `sex`, `report_text`,
`mask_paths` (';'-separated), `split`, optional `patient_id` ...), or an `.npz` file of arrays.
Built-in specs live in `dinotrain/eval/specs/*.yaml`; a user's spec is any YAML path.

Keys (defaults in `TaskSpec`):

    name: jsrt_nodule            # defaults to the file stem
    dataset: jsrt                # folder (or .npz file) relative to --data
    kind: classification         # one of dinotrain.eval.kinds.KINDS: classification | regression |
                                 # segmentation | alignment | report
    label_column: label          # classification / regression target column
    classes: [no_nodule, nodule] # optional: keep only these classes, in this order
    multilabel: false            # labels split on label_separator, one binary target each
    label_separator: "|"
    where: {modality: [X-ray]}   # keep rows whose column has one of these values
    exclude: {label: [unknown]}  # drop rows whose column has one of these values
    group_column: patient_id     # patient-level splits (a patient never crosses splits)
    group_join: {dataset: brain_mri_large, match_on: source_path}  # read group_column from another
                                 # dataset's metadata, matched on a column both share
    split_like: ham10000_large   # each group's split as this other task (same dataset) assigns it:
                                 # the tasks share one test set (one held-out set in the study)
    split_column: null           # use a column with values train/val/test instead of a random split
    split_fractions: [0.6, 0.2, 0.2]
    probes: [knn, linear]        # classification probes
    structures: {lungs: [left_lung, right_lung]}   # segmentation: structure -> mask folder names
    text_column: report_text     # alignment / report
    max_samples: null            # deterministic stratified subset (quick runs)
    seed: 0

Rows with an empty target are dropped (e.g. unknown age), so each task uses what it can.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dinotrain.eval.errors import SpecError
from dinotrain.eval.kinds import KINDS, kind_of

__all__ = ["KINDS", "PROBES", "SpecError", "TaskData", "TaskSpec", "load_spec", "load_task", "spec_from_dict"]

PROBES = ("knn", "linear")


@dataclass
class TaskSpec:
    name: str
    dataset: str
    kind: str = "classification"
    metadata: str = "metadata.csv"
    label_column: str = "label"
    classes: list[str] | None = None
    multilabel: bool = False
    label_separator: str = "|"
    where: dict[str, list[str]] = field(default_factory=dict)
    exclude: dict[str, list[str]] = field(default_factory=dict)
    group_column: str | None = None
    group_join: dict[str, str] = field(default_factory=dict)
    split_like: str | None = None
    split_column: str | None = None
    split_fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    probes: list[str] = field(default_factory=lambda: list(PROBES))
    structures: dict[str, list[str]] = field(default_factory=dict)
    text_column: str = "report_text"
    max_samples: int | None = None
    seed: int = 0
    description: str = ""
    source: str = ""  # where the spec was read from (for error messages)


@dataclass
class TaskData:
    """The rows of one task after filtering, subsetting and splitting.

    `keys` identify samples across tasks (feature cache); `images` say how to read each one:
    a file path, or ("npz", file, array_name, index).
    """

    spec: TaskSpec
    keys: list[str]
    images: list[Any]
    rows: list[dict[str, str]]
    split: np.ndarray  # "train" / "val" / "test" per row
    groups: np.ndarray  # patient (or sample) id per row, for grouped bootstrap
    data_dir: Path | None = None  # the dataset folder (mask paths are relative to it)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def column(self, name: str) -> list[str]:
        return [r.get(name, "") for r in self.rows]


# ----------------------------------------------------------------------------- loading specs
def builtin_dir() -> Path:
    return Path(str(resources.files("dinotrain.eval") / "specs"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def load_spec(name_or_path: str) -> TaskSpec:
    """A built-in spec by name (`jsrt_nodule`) or a YAML file path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        candidate = builtin_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            raise SpecError(
                f"task '{name_or_path}': no such YAML file and no built-in spec of that name; "
                f"built-in tasks: {', '.join(builtin_names())}"
            )
        path = candidate
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        from dinotrain.config import yaml_problem

        raise SpecError(f"task spec {path}: not valid YAML at {yaml_problem(e)}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"task spec {path}: expected a mapping of keys (name, dataset, kind, ...)")
    return spec_from_dict(raw, source=str(path), default_name=path.stem)


def spec_from_dict(raw: dict, source: str = "<dict>", default_name: str = "task") -> TaskSpec:
    known = {f.name for f in dataclasses.fields(TaskSpec)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"task spec {source}: unknown key(s) {unknown}; allowed keys: {sorted(known)}")
    raw = dict(raw)
    raw.setdefault("name", default_name)
    if "dataset" not in raw:
        raise SpecError(f"task spec {source}: missing 'dataset' (the folder under --data holding metadata.csv)")
    spec = TaskSpec(**raw, source=source)
    if spec.kind not in KINDS:
        raise SpecError(f"task spec {source}: kind '{spec.kind}' is not one of {', '.join(KINDS)}")
    bad = [p for p in spec.probes if p not in PROBES]
    if bad:
        raise SpecError(f"task spec {source}: probes {bad} unknown; use a subset of {list(PROBES)}")
    fr = spec.split_fractions
    if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or fr[2] <= 0:
        raise SpecError(f"task spec {source}: split_fractions must be [train, val, test] with train, test > 0")
    if spec.group_join and (not spec.group_column or set(spec.group_join) != {"dataset", "match_on"}):
        raise SpecError(f"task spec {source}: group_join needs group_column and exactly the keys "
                        "{dataset: <folder under --data>, match_on: <column both metadata files share>}")
    if spec.split_like and not spec.group_column:
        raise SpecError(f"task spec {source}: split_like needs group_column (splits are shared group by group)")
    problem = kind_of(spec).check(spec)
    if problem:
        raise SpecError(f"task spec {source}: {problem}")
    return spec


# ----------------------------------------------------------------------------- reading data
def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _npz_table(spec: TaskSpec, file: Path) -> tuple[list[dict[str, str]], list[Any], list[str]]:
    """Rows of an .npz holding `<split>_images` and `<split>_labels` arrays (MedMNIST layout)."""
    with np.load(file, allow_pickle=False) as z:
        names = set(z.files)
        rows, images, keys = [], [], []
        for split in ("train", "val", "test"):
            if f"{split}_images" not in names:
                continue
            if f"{split}_labels" not in names:
                raise SpecError(f"{file}: has {split}_images but no {split}_labels")
            labels = z[f"{split}_labels"].reshape(len(z[f"{split}_labels"]), -1)
            for i, lab in enumerate(labels):
                idx = str(int(lab[0])) if labels.shape[1] == 1 else "|".join(str(j) for j in np.flatnonzero(lab))
                cls = spec.classes[int(idx)] if (spec.classes and labels.shape[1] == 1) else idx
                rows.append({"label": cls, "split": split, "path": f"{split}_images[{i}]"})
                images.append(("npz", str(file), f"{split}_images", i))
                keys.append(f"{spec.dataset}:{split}_images:{i}")
        if not rows:
            raise SpecError(f"{file}: no '<split>_images' arrays (expected train_images, val_images, test_images)")
    return rows, images, keys


def _file_tag(path: Path) -> str:
    """Size and mtime: a cheap fingerprint so an edited file does not reuse cached features."""
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _subsample(n_rows: int, strat: list[str] | None, k: int, seed: int) -> np.ndarray:
    """Deterministic subset of k rows, stratified by `strat` when every class can be kept."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n_rows)
    if k >= n_rows:
        return idx
    if strat is not None:
        try:
            sel, _ = train_test_split(idx, train_size=k, stratify=strat, random_state=seed)
            return np.sort(sel)
        except ValueError:  # a class too rare to stratify: fall back to a plain random subset
            pass
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=k, replace=False))


def _split(strat: list[str], groups: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """Stratified, grouped train/val/test assignment (a group never crosses splits)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(strat)
    out = np.empty(n, dtype=object)
    fr = np.asarray(fractions, dtype=float) / sum(fractions)
    # Folds of size ~1/k; test and val take whole folds, so k comes from the smallest non-zero share.
    smallest = min(f for f in fr if f > 0)
    k = max(3, int(round(1 / smallest)))
    n_groups = len(set(groups.tolist()))
    k = min(k, n_groups)
    y = np.unique(np.asarray(strat), return_inverse=True)[1]
    if k < 3:
        raise SpecError(f"cannot split {n} samples in {n_groups} groups into train/val/test: need at least 3 groups")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": expected for rare classes
        warnings.simplefilter("ignore", UserWarning)
        try:
            folds = list(splitter.split(np.zeros(n), y, groups))
        except ValueError:  # every class smaller than k (tiny subsets): split without stratifying
            folds = list(splitter.split(np.zeros(n), np.zeros(n, dtype=int), groups))
    n_test = max(1, int(round(fr[2] * k)))
    n_val = int(round(fr[1] * k)) if fr[1] > 0 else 0
    out[:] = "train"
    for j, (_, test_idx) in enumerate(folds):
        if j < n_test:
            out[test_idx] = "test"
        elif j < n_test + n_val:
            out[test_idx] = "val"
    return out.astype(str)


def load_task(spec: TaskSpec, root: str | Path, max_samples: int | None = None) -> TaskData:
    """Filter, subset and split the spec's dataset under `root`."""
    root = Path(root).expanduser()
    where = root / spec.dataset
    if not where.exists():
        raise SpecError(
            f"task '{spec.name}' ({spec.source}): dataset '{spec.dataset}' not found under --data {root}; "
            f"pass --data pointing at the folder that holds {spec.dataset}"
        )
    if where.is_file() and where.suffix == ".npz":
        rows, images, keys = _npz_table(spec, where)
    else:
        meta = where / spec.metadata
        if not meta.is_file():
            raise SpecError(f"task '{spec.name}': {meta} missing (each dataset folder needs a {spec.metadata})")
        rows = _read_csv(meta)
        if rows and "path" not in rows[0]:
            raise SpecError(f"{meta}: no 'path' column (image paths relative to {where})")
        if spec.group_join:
            rows = join_groups(spec, root, rows)
        images = [str(where / r["path"]) for r in rows]
        keys = [f"{spec.dataset}/{r['path']}" for r in rows]
    for col in [*spec.where, *spec.exclude]:
        if rows and col not in rows[0]:
            raise SpecError(f"task '{spec.name}' ({spec.source}): column '{col}' not in {spec.dataset}'s metadata")
    keep, kind = [], kind_of(spec)
    for i, r in enumerate(rows):
        if any(r.get(c, "") not in set(map(str, v)) for c, v in spec.where.items()):
            continue
        if any(r.get(c, "") in set(map(str, v)) for c, v in spec.exclude.items()):
            continue
        if kind.target_ok(spec, r):
            keep.append(i)
    if not keep:
        raise SpecError(f"task '{spec.name}' ({spec.source}): no rows left after filtering {where}")
    rows = [rows[i] for i in keep]
    images = [images[i] for i in keep]
    keys = [keys[i] for i in keep]

    strat = kind.strat_labels(spec, rows)
    limit = max_samples if max_samples is not None else spec.max_samples
    if limit is not None:
        sel = _subsample(len(rows), strat, int(limit), spec.seed)
        rows, images, keys = [rows[i] for i in sel], [images[i] for i in sel], [keys[i] for i in sel]
        strat = [strat[i] for i in sel]
    # file fingerprints make cache keys change when an image is replaced
    keys = [k + "@" + (_file_tag(Path(img)) if isinstance(img, str) else _file_tag(Path(img[1])))
            for k, img in zip(keys, images)]

    groups = np.asarray(
        [r.get(spec.group_column, "") or k for r, k in zip(rows, keys)] if spec.group_column else keys,
        dtype=object,
    ).astype(str)
    if spec.split_column:
        split = np.asarray([_norm_split(r.get(spec.split_column, ""), spec) for r in rows])
    else:
        split = _split(strat, groups, spec.split_fractions, spec.seed)
    if spec.split_like:
        split = _split_like(spec, root, groups, split)
    return TaskData(spec=spec, keys=keys, images=images, rows=rows, split=split, groups=groups,
                    data_dir=where if where.is_dir() else where.parent)


def _split_like(spec: TaskSpec, root: Path, groups: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each group's split as `split_like`'s task assigns it (whole, not subsampled); groups that task
    does not have (rows it filters out) keep this task's own assignment.

    Why: ham10000_large, its sex and its age task stratify on different labels, so their own splits
    would put different lesions in test; sharing one keeps one test set (and the study's pretraining
    pool loses one test set's lesions, not three)."""
    other = load_spec(spec.split_like)
    if other.dataset != spec.dataset or other.group_column != spec.group_column or other.split_like:
        raise SpecError(f"task '{spec.name}' ({spec.source}): split_like '{spec.split_like}' must be a task on the "
                        f"same dataset ({spec.dataset}) with the same group_column and no split_like of its own")
    theirs = load_task(other, root, None)
    by_group = dict(zip(theirs.groups.tolist(), theirs.split.tolist()))
    return np.asarray([by_group.get(g, s) for g, s in zip(groups.tolist(), own.tolist())]).astype(str)


def join_groups(spec: TaskSpec, root: Path, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """`rows` with `group_column` copied from `group_join`'s dataset, matched on its `match_on` column.

    Why: a small set cut from a larger one (brain_mri = the Testing part of brain_mri_large) can
    borrow the larger set's near-duplicate groups instead of keeping a second copy of them.
    A row without a match keeps an empty group (then it is a group of its own)."""
    other, on, col = spec.group_join["dataset"], spec.group_join["match_on"], spec.group_column
    meta = Path(root) / other / spec.metadata
    if not meta.is_file():
        raise SpecError(f"task '{spec.name}' ({spec.source}): group_join dataset {meta} not found; "
                        f"pass --data pointing at the folder that holds {other}")
    theirs = _read_csv(meta)
    for name, table in ((other, theirs), (spec.dataset, rows)):
        if table and on not in table[0]:
            raise SpecError(f"task '{spec.name}' ({spec.source}): group_join column '{on}' not in {name}'s metadata")
    if theirs and col not in theirs[0]:
        raise SpecError(f"task '{spec.name}' ({spec.source}): group column '{col}' not in {other}'s metadata")
    lookup = {r[on]: r[col] for r in theirs}
    return [{**r, col: lookup.get(r[on], "")} for r in rows]


def image_rows(spec: TaskSpec, root: str | Path) -> dict[str, dict[str, str]]:
    """Every image file (no filter, no subset) of the spec's dataset, and of its `group_join`
    dataset, -> its metadata row with `group_column` filled in. Empty for an ungrouped spec.

    The study's held-out rule uses it to drop a test image's whole group (all slices of one series,
    all images of one lesion) from pretraining: images the task filtered out or did not sample, and
    the near-duplicates a joined dataset holds (brain_mri_large's Training slices of a brain_mri group)."""
    root = Path(root).expanduser()
    where = root / spec.dataset
    if not spec.group_column or not (where / spec.metadata).is_file():
        return {}
    rows = _read_csv(where / spec.metadata)
    if spec.group_join:
        rows = join_groups(spec, root, rows)
    out = {str(where / r["path"]): r for r in rows}
    if spec.group_join:
        other = root / spec.group_join["dataset"]
        out.update({str(other / r["path"]): r for r in _read_csv(other / spec.metadata)})
    return out


def _norm_split(value: str, spec: TaskSpec) -> str:
    v = value.strip().lower()
    v = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}.get(v, v)
    if v not in ("train", "val", "test"):
        raise SpecError(f"task '{spec.name}': split column '{spec.split_column}' has value '{value}' "
                        "(expected train/val/test); remove split_column to split at random")
    return v


def spec_hash(spec: TaskSpec) -> str:
    return hashlib.sha1(repr(dataclasses.asdict(spec)).encode()).hexdigest()[:12]
