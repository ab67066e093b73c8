"""The tasks on the larger sets (ham10000_large*, brain_mri_large) and brain_mri's borrowed groups:
split sizes and grouping on the real folders, the study's held-out rule, a real `dinotrain eval`."""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dinotrain.cli import main as cli_main
from dinotrain.eval.specs import SpecError, load_spec, load_task, spec_from_dict
from launch.study import study_data

LARGE = ["ham10000_large", "ham10000_large_sex", "ham10000_large_age", "brain_mri_large"]
MIXED_LABEL_GROUPS = {"g1", "g47"}  # shared/data README section 9: identical images under two labels


def _meta(test_data: Path, dataset: str) -> list[dict[str, str]]:
    with (test_data / dataset / "metadata.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _assert_grouped_split(task) -> None:
    """No group in two splits; test and val near their 20 % share; every class in every split."""
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not set(task.groups[task.split == a]) & set(task.groups[task.split == b]), (task.spec.name, a, b)
    n = len(task.split)
    for s in ("val", "test"):
        assert abs((task.split == s).sum() / n - 0.2) < 0.02, (task.spec.name, s)
    if task.spec.kind == "classification":
        labels = np.asarray(task.column(task.spec.label_column))
        for s in ("train", "val", "test"):
            assert set(labels[task.split == s]) == set(task.spec.classes), (task.spec.name, s)


@pytest.fixture(scope="module")
def large_tasks(test_data):
    if not (test_data / "brain_mri_large" / "metadata.csv").is_file():
        pytest.skip(f"{test_data} has no brain_mri_large/ (shared/data README section 9)")
    return {n: load_task(load_spec(n), test_data) for n in [*LARGE, "brain_mri"]}


def test_large_tasks_split_by_lesion_and_by_near_duplicate_group(large_tasks, test_data):
    for task in large_tasks.values():
        _assert_grouped_split(task)
    ham = _meta(test_data, "ham10000_large")
    assert len(large_tasks["ham10000_large"].keys) == len(ham)  # every image has one of the 7 diagnoses
    for name, col in (("ham10000_large_sex", "sex"), ("ham10000_large_age", "age")):
        assert len(large_tasks[name].keys) == sum(bool(r[col].strip()) for r in ham)  # blank = unknown: dropped
    brain = large_tasks["brain_mri_large"]
    rows = _meta(test_data, "brain_mri_large")
    assert len(brain.keys) == sum(r["group_id"] not in MIXED_LABEL_GROUPS for r in rows)
    assert not set(brain.groups) & MIXED_LABEL_GROUPS
    sizes = Counter(brain.groups.tolist())
    assert sum(v > 1 for v in sizes.values()) > 400  # the split really had multi-slice groups to keep together
    # one label per group left (the mixed ones were the only label noise)
    labels = dict(zip(brain.groups.tolist(), brain.column("label")))
    assert all(labels[g] == lab for g, lab in zip(brain.groups.tolist(), brain.column("label")))
    # the source's Testing folder does not decide the split: both folders feed every split
    src = np.asarray(brain.column("source_split"))
    for s in ("train", "val", "test"):
        assert set(src[brain.split == s]) == {"Training", "Testing"}, s


def test_brain_mri_borrows_the_large_sets_groups(large_tasks, test_data):
    small = large_tasks["brain_mri"]
    group_of = {r["source_path"]: r["group_id"] for r in _meta(test_data, "brain_mri_large")}
    assert small.groups.tolist() == [group_of[r["source_path"]] for r in small.rows]
    assert len(small.keys) == sum(group_of[r["source_path"]] not in MIXED_LABEL_GROUPS
                                  for r in _meta(test_data, "brain_mri"))
    # adjacent slices: groups of several images inside the 394, all now on one side
    assert len(set(small.groups.tolist())) < len(small.keys) - 50


def test_group_join_errors_name_the_fix(tmp_path, test_data):
    with pytest.raises(SpecError, match="group_join needs group_column"):
        spec_from_dict({"dataset": "brain_mri", "group_join": {"dataset": "brain_mri_large", "match_on": "path"}})
    spec = spec_from_dict({"dataset": "brain_mri", "group_column": "group_id",
                           "group_join": {"dataset": "nowhere", "match_on": "source_path"}})
    with pytest.raises(SpecError, match="pass --data pointing at the folder that holds nowhere"):
        load_task(spec, test_data)
    spec.group_join = {"dataset": "brain_mri_large", "match_on": "lesion_id"}
    with pytest.raises(SpecError, match="group_join column 'lesion_id' not in"):
        load_task(spec, test_data)


def test_held_out_drops_the_whole_group_of_every_test_image(test_data, large_tasks):
    # a subset leaves group-mates of test slices outside the task: they must leave pretraining too
    hold = study_data.held_out(["brain_mri"], test_data, 120)
    task = load_task(load_spec("brain_mri"), test_data, 120)
    test_groups = set(task.groups[task.split == "test"])
    root = test_data.resolve()
    by_source = {r["source_path"]: r["group_id"] for r in _meta(test_data, "brain_mri_large")}
    mates = {str((root / "brain_mri" / r["path"]).resolve()) for r in _meta(test_data, "brain_mri")
             if by_source[r["source_path"]] in test_groups}
    in_small = {p for p in hold.group_images if Path(p).parent.parent.name == "brain_mri"}
    assert in_small == mates - hold.images and in_small
    # the study's mri pool is brain_mri_large: none of its slices in a test group, every other slice kept
    listed = {r["path"] for r in study_data.group_listing("mri", test_data, hold)}
    group_of = {str((root / "brain_mri_large" / r["path"]).resolve()): r["group_id"]
                for r in _meta(test_data, "brain_mri_large")}
    assert listed and not {group_of[p] for p in listed} & test_groups
    assert len(listed) == sum(g not in test_groups for g in group_of.values())


def test_dinotrain_eval_on_each_large_task(tmp_path, test_data, large_tasks):
    """A random-init vit_tiny through the CLI on a stratified subset of each task: every metric with a CI."""
    out, timings = tmp_path / "out", {}
    for name in LARGE:
        t0 = time.perf_counter()
        rc = cli_main(["eval", "random:vit_tiny", "--tasks", name, "--data", str(test_data), "--out", str(out / name),
                       "--resolution", "56", "--max-samples", "300", "--bootstrap", "50", "--batch-size", "32",
                       "--no-progress", "--no-plot", "--threads", "1", "--cache-dir", str(tmp_path / "cache")])
        timings[name] = time.perf_counter() - t0
        assert rc == 0, name
        recs = json.loads((out / name / "results.json").read_text())["results"]
        n_test = int((load_task(load_spec(name), test_data, 300).split == "test").sum())
        kinds = {(r["kind"], r["metric"]) for r in recs}
        want = {("ridge", "mae"), ("ridge", "r2"), ("mean_baseline", "mae")} if name.endswith("_age") else {("linear", "auroc")}
        if name in ("ham10000_large", "brain_mri_large"):
            want |= {("knn", "auroc")}
        assert want <= kinds, (name, kinds)
        for r in recs:
            assert r["task"] == name and r["split"] == "test" and r["n"] == n_test and math.isfinite(r["value"])
            assert r["ci_low"] is not None and r["ci_low"] <= r["ci_high"], r
            if r["metric"] != "r2":  # R² of a probe at the training mean is ~0 on all items but below 0 on most
                # resamples (their mean differs): its percentile CI can sit just below the estimate
                assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9, r
    print("eval seconds per task:", {k: round(v, 1) for k, v in timings.items()})


def test_held_out_reaches_copies_and_near_duplicates_in_the_other_folder(test_data, large_tasks):
    """brain_mri's test groups also leave brain_mri_large (its Training near-copies); a ham10000 test
    image also leaves ham10000_large (the same ISIC file), and nothing else of it does."""
    hold = study_data.held_out(["brain_mri", "ham10000"], test_data, None)
    small = large_tasks["brain_mri"]
    test_groups = set(small.groups[small.split == "test"])
    root = test_data.resolve()
    for r in _meta(test_data, "brain_mri_large"):
        image = str((root / "brain_mri_large" / r["path"]).resolve())
        assert hold.excludes("brain_mri_large", image, r) == (r["group_id"] in test_groups), r["path"]
    assert sum(r["source_split"] == "Training" and r["group_id"] in test_groups
               for r in _meta(test_data, "brain_mri_large")) > 20  # near-copies only the large folder holds
    ham = load_task(load_spec("ham10000"), test_data)
    test_sources = {ham.rows[i]["source_path"] for i in ham.indices("test")}
    large = [(r, str((root / "ham10000_large" / r["path"]).resolve())) for r in _meta(test_data, "ham10000_large")]
    dropped = {r["source_path"] for r, image in large if hold.excludes("ham10000_large", image, r)}
    assert dropped == test_sources and len(dropped) == len(ham.indices("test"))
