"""benchmarks/gpu_study.sh on a CPU: the dry run end to end as the GPU machine's Python would run it,
the carry-sized data copy, and the step budget arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch.study import gpu_study

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_end_to_end_with_the_gpu_machines_packages_only(test_data, tmp_path):
    """`gpu_study.sh --dry-run` through a Python that has only what the lent GPU machine has (no
    DALI, submitit, matplotlib, webdataset): shards, calibration, a budget-sized run, the paired
    evaluation, study.json and report.md."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import tests.machine_sim as m; m.main()" '
                       f'--gpu-machine --block nvidia.dali -- "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHON": str(wrapper), "OUT": str(tmp_path / "out"), "DINOTRAIN_TEST_DATA": str(test_data),
           "PYTHONPATH": str(REPO)}
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_study.sh"), "--dry-run"], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:]
    out = tmp_path / "out" / "gpu_study"
    study = json.loads((out / "study.json").read_text())
    plan = study["plan"]
    assert plan["seconds_per_step"] > 0 and plan["calibration_s"] > 0 and plan["steps"] == 3  # the dry run's cap
    assert plan["images_seen"] == 3 * plan["batch"] == 12
    assert study["runs"]["ssl"]["steps"] == 3 and study["dry_run"] and study["machine"]["gpu"] is None
    assert set(study["tasks"]) == {"jsrt_sex", "jsrt_anatomy"}
    for row in study["tasks"].values():
        lo, hi = row["delta_ci"]
        assert lo <= row["delta"] <= hi and row["n_test"] > 0
    assert set(study["data"]["groups"]) == {"cxr", "derm", "us", "mri", "ct"}
    text = (out / "report.md").read_text()
    assert "| jsrt_sex | linear/auroc |" in text and "same network at its step-0 weights" in text
    assert "loader: " not in res.stdout or "torch on cpu" in res.stdout  # DALI is not there: the torch backend
    cfg = (out / "runs" / "ssl" / "config.yaml").read_text()
    assert "backend: torch" in cfg and "max_steps: 3" in cfg


def test_prepare_shrinks_images_and_masks_and_keeps_the_metadata(test_data, tmp_path):
    rec = gpu_study.prepare(test_data, tmp_path / "d", 64, ["jsrt"], metadata_only=("brain_mri_large",))
    assert [p.name for p in (tmp_path / "d" / "brain_mri_large").iterdir()] == ["metadata.csv"]
    rows = (test_data / "jsrt" / "metadata.csv").read_bytes()
    assert (tmp_path / "d" / "jsrt" / "metadata.csv").read_bytes() == rows
    assert rec["datasets"]["jsrt"] == {"rows": 247, "files": 247 * 6}  # image + 5 anatomy masks each
    img = Image.open(tmp_path / "d" / "jsrt" / "images" / "JPCLN001.png")
    mask = Image.open(tmp_path / "d" / "jsrt" / "masks" / "heart" / "JPCLN001.png")
    assert img.size == mask.size == (64, 64) and set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}  # nearest: still binary
    assert 0 < rec["bytes"] < 2**20 * 5
    assert json.loads((tmp_path / "d" / "prepared.json").read_text())["bytes"] == rec["bytes"]
    with pytest.raises(RuntimeError, match=r"MiB is over the 0 MiB that may travel; use a smaller --size \(now 64\)"):
        gpu_study.prepare(test_data, tmp_path / "e", 64, ["jsrt"], limit=1000)


def test_step_budget_and_step_time():
    assert gpu_study.fit_steps(300.0, 60.0, 0.1) == 2400
    assert gpu_study.fit_steps(30.0, 60.0, 0.1) == 10  # over budget: still a run
    assert gpu_study.needed_datasets(gpu_study.TASKS) == ["brain_mri", "busi_ultrasound", "covid_cxr", "ham10000_derm",
                                                          "jsrt"]
    assert gpu_study.joined_datasets(gpu_study.TASKS) == ["brain_mri_large"]  # brain_mri's groups: metadata only


def test_step_seconds_skips_the_warm_up(tmp_path):
    rows = [{"step": i, "step_time_s": 9.0 if i <= 3 else 0.2 + i / 1000} for i in range(1, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gpu_study.step_seconds(tmp_path, 3) == pytest.approx(0.2065)
    with pytest.raises(RuntimeError, match="no step times logged after step 9"):
        gpu_study.step_seconds(tmp_path, 9)


def test_without_a_gpu_or_prepared_data_the_script_says_what_to_do(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_study.sh")], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    assert res.returncode == 2 and "gpu_study: no Python with a CUDA-enabled torch found" in res.stderr
