"""benchmarks/gpu_check on a CPU machine: arguments, the JSON schema, and the CPU half of each comparison.

The GPU halves run only on a GPU machine (`bash benchmarks/gpu_check.sh`); what is checked here
is everything they stand on, so the script cannot rot between GPU runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu import decode as D
from benchmarks.gpu import report
from benchmarks.gpu.attention import Crops, compare
from benchmarks.gpu.training import base_overrides, cases, loss_rel_diff, resume_check, summarise
from dinotrain.config import load_config
from tests.shard_fixtures import spread

REPO = Path(__file__).resolve().parents[1]


def test_arguments(capsys):
    a = gpu_check.parse_args([])
    assert a.sections == list(gpu_check.SECTIONS) and a.archs == ["vit_small", "vit_base", "vit_large"] and a.batch == 40
    assert a.device == "cuda"
    a = gpu_check.parse_args(["--only", "dali,train", "--skip", "train", "--tol", "dali_crops=0.5", "--archs", "vit_small"])
    assert a.sections == ["dali"] and dict(a.tol) == {"dali_crops": 0.5} and a.archs == ["vit_small"]
    for bad, says in ((["--only", "dali,gpu"], "unknown section(s) gpu"), (["--tol", "speed=1"], "unknown tolerance"),
                      (["--tol", "resume=x"], "write NAME=NUMBER"), (["--archs", "vit_huge"], "unknown arch(s) vit_huge"),
                      (["--steps", "3"], "at least 6"), (["--batch", "50", "--images", "10"], "batch <= images")):
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert says in err, (bad, err)


def test_without_a_gpu_main_exits_2_with_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.sh")
    assert gpu_check.main(["--out", str(tmp_path)]) == report.EXIT_UNAVAILABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gpu_check: needs a CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)"]
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")})
    assert res.returncode == 2 and "no Python with a CUDA-enabled torch" in res.stderr


def test_checks_json_schema_tables_and_exit_status(tmp_path):
    ok = report.check("dali", "decode", 0.0, 0.0, "levels")
    assert ok["status"] == "ok"
    assert [report.check("s", "n", v, 1e-3)["status"] for v in (2e-3, float("nan"), float("inf"), None)] == ["mismatch"] * 4
    ms = [report.measurement("train", "vit_base bf16", images_per_s=812.5, mfu=0.41, losses=[11.1, 11.0], finite=True)]
    args = gpu_check.parse_args(["--tol", "resume=0.5"])
    doc = gpu_check.document(args, [ok], ms, time.perf_counter())
    assert report.validate(doc) == [] and doc["ok"] and doc["exit_status"] == 0
    assert doc["params"]["tolerances"]["resume"] == 0.5 and doc["params"]["tolerances"]["dali_decode"] == 0.0
    path = gpu_check.write(doc, tmp_path)
    assert report.validate(json.loads(path.read_text())) == []  # survives the JSON round trip
    text = report.tables(doc)
    assert "| dali | decode | 0 levels | 0 | **ok** |" in text and "| vit_base bf16 | 812 | 0.41 | True |" in text
    bad = gpu_check.document(args, [ok, report.check("attention", "grads", 0.3, 0.1)], ms, time.perf_counter())
    assert bad["exit_status"] == report.EXIT_MISMATCH and not bad["ok"] and report.validate(bad) == []
    err = gpu_check.document(args, [ok, report.note("train", "vit_large bf16", "error", "OOM")], ms, time.perf_counter())
    assert err["exit_status"] == report.EXIT_ERROR
    assert report.exit_status([report.note("train", "x", "skipped", "past --budget-s")]) == report.EXIT_OK
    # what validate catches
    broken = json.loads(json.dumps(doc))
    del broken["machine"]
    assert report.validate(broken) == ["document: missing 'machine'"]
    broken = json.loads(json.dumps(doc))
    broken["checks"][0]["status"] = "fine"
    broken["measurements"][0]["values"]["x"] = {"nested": 1}
    broken["exit_status"] = True
    problems = report.validate(broken)
    assert any("checks[0].status: 'fine'" in p for p in problems)
    assert any("measurements[0].values.x: dict" in p for p in problems)
    assert any("document.exit_status: bool" in p for p in problems)
    broken = json.loads(json.dumps(bad))
    broken["exit_status"], broken["ok"] = 0, True
    assert any("the checks give 1" in p for p in report.validate(broken))


@pytest.fixture(scope="module")
def codec_sets(test_data, tmp_path_factory):
    from benchmarks.gpu.data import build_sets, encoded_samples

    files = spread(list((test_data / "jsrt" / "images").iterdir()), 4)
    work = tmp_path_factory.mktemp("gpu_check_sets")
    built = build_sets(files, str(test_data / "jsrt" / "metadata.csv"), work, size=112, bits=16, workers=1, per_shard=2)
    return {c: (folder, encoded_samples(folder, 4)) for c, (folder, _) in built.items()}


def test_dali_reference_half_on_png_and_j2k(codec_sets):
    data_cfg = load_config(None, ["data.channels=3", "data.global_crops_size=56", "data.local_crops_size=28"]).data
    crops = {}
    for codec, (_, enc) in codec_sets.items():
        assert len(enc) == 4
        got = D.decode(enc, "cpu")
        assert [g.dtype for g in got] == [np.uint16] * 4
        assert D.max_abs_diff(D.reference_decode(enc), got) == 0.0
        params = D.crop_params(enc, data_cfg, seed=1)
        crops[codec] = D.multicrop(enc, params, data_cfg, "cpu", num_threads=1)
        assert [c.shape for c in crops[codec]] == [(4, 3, 56, 56)] * 2 + [(4, 3, 28, 28)] * 8
        rate = D.decode_rate(enc, "cpu", batch_size=2, seconds=0.3, num_threads=1)
        assert rate["images_per_s"] > 0 and rate["images"] >= 2 and rate["batch"] == 2
    # the codec check of the GPU half, here on the CPU: the same crops from J2K and PNG bytes
    assert D.max_abs_diff(crops["png"], crops["j2k"]) == 0.0
    # the comparison fails on what it must catch: a changed pixel, another shape
    moved = [c.copy() for c in crops["png"]]
    moved[3][0, 0, 5, 5] += 0.5
    assert report.check("dali", "x", D.max_abs_diff(crops["png"], moved), 1e-2)["status"] == "mismatch"
    assert D.max_abs_diff(crops["png"][:1], [crops["png"][0][:, :, :-1]]) == float("inf")


def test_attention_reference_half_packed_layout_matches_sdpa():
    r = compare("vit_tiny", "cpu", "sdpa_dense", crops=Crops(batch=1, global_size=56, local_size=28, n_local=2))
    tol = gpu_check.TOLERANCES
    assert r["output_rel_diff"] < tol["attn_fp32_out"] / 100 and r["grad_rel_diff"] < tol["attn_fp32_grad"] / 100
    assert r["params_with_grad"] == r["params_expected"] > 100 and r["crops"] == "2x56 + 2x28"


def test_every_training_case_is_a_valid_config_and_loss_comparisons(tmp_path):
    planned = cases(["vit_base", "vit_large"], compile_=True)
    assert [c.name for c in planned] == ["vit_base bf16", "vit_base fp16", "vit_base bf16 AC", "vit_large bf16",
                                         "vit_large fp16", "vit_large bf16 AC", "vit_base bf16 compile"]
    names = {c.name for c in planned}
    for c in planned:
        assert c.reference is None or c.reference in names
        cfg = load_config(None, [*base_overrides(tmp_path, tmp_path / "run", 20, 40, "gpu"), *c.overrides()])
        assert (cfg.model.arch, cfg.parallel.mixed_precision, cfg.parallel.compile) == (c.arch, c.precision, c.compile)
        assert cfg.data.device == "gpu" and cfg.train.device == "cuda" and cfg.data.batch_size_per_gpu == 40
    assert loss_rel_diff([10.0, 10.0], [10.0, 10.1]) == pytest.approx(0.01)
    assert loss_rel_diff([10.0], [10.0, 9.0], 2) == float("inf")  # a short run never passes
    rows = [{"step": i, "total_loss": 11.0 - i / 10, "images_per_s": 100.0 + i, "step_time_s": 0.5, "mfu": 0.3,
             "peak_memory_gb": 10.0 + i} for i in range(1, 9)]
    s = summarise(rows, warmup=5)
    assert s["images_per_s"] == 107.0 and s["peak_memory_gb"] == 18.0 and s["steps"] == 8 and s["finite"]
    rows[2]["total_loss"] = float("nan")
    assert not summarise(rows, warmup=5)["finite"]


@pytest.mark.slow
def test_resume_reference_half_on_cpu(codec_sets, tmp_path):
    """The GPU section's exact-resume check, run by the real trainer on the CPU with a tiny model."""
    small = ["data.global_crops_size=56", "data.local_crops_size=28", "data.local_crops_number=2",
             "ssl.head_n_prototypes=256", "ssl.head_hidden_dim=64", "ssl.head_bottleneck_dim=32",
             "parallel.fsdp=false", "data.channels=1", "model.in_chans=1"]
    r = resume_check(codec_sets["j2k"][0], tmp_path, 4, 2, "cpu", "vit_tiny", extra=small)
    assert len(r["straight"]) == 4 and len(r["resumed"]) == 4 and r["resumed_at"] == 2
    assert r["rel_diff"] <= 1e-6, r  # CPU kernels with threads: not always bitwise (as test_train_run)
    assert all(np.isfinite(r["straight"]))


def test_driver_builds_both_shard_sets_and_records_a_failed_section(test_data, tmp_path, capsys):
    """On a CPU machine the GPU half of `dali` fails: recorded as an error (exit 3), the JSON still valid."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.sh")
    args = gpu_check.parse_args(["--only", "dali", "--images", "4", "--batch", "2", "--data", str(test_data / "jsrt"),
                                 "--out", str(tmp_path)])
    doc = gpu_check.run_check(args)
    assert report.validate(doc) == [] and doc["exit_status"] == report.EXIT_ERROR and not doc["ok"]
    assert [(c["section"], c["status"]) for c in doc["checks"]] == [("dali", "error")]
    builds = {m["case"]: m["values"] for m in doc["measurements"] if m["section"] == "shards"}
    assert set(builds) == {"png build", "j2k build"}
    assert all(v["images"] == 4 and v["bytes"] > 0 and "real images" in v["origin"] for v in builds.values())
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(doc, default=str))


def _sim(args: list[str], *machine: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """benchmarks.gpu_check in a subprocess whose Python lacks some packages (tests/machine_sim.py)."""
    code = "import tests.machine_sim as m; m.main()"
    return subprocess.run([sys.executable, "-c", code, *machine, "--", "-m", "benchmarks.gpu_check", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_without_dali_its_sections_skip_with_the_reason_and_the_others_run(test_data, tmp_path):
    """As on the lent GPU machine (its packages only, no DALI or xFormers), on the CPU: the DALI
    sections are skipped and say why, the torch loader runs, and the exit is 0."""
    out = tmp_path / "out"
    res = _sim(["--device", "cpu", "--only", "dali,decode_rate,loader", "--images", "4", "--batch", "2",
                "--data", str(test_data / "jsrt"), "--out", str(out)], "--gpu-machine", "--block", "nvidia.dali")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert report.validate(doc) == [] and doc["ok"] and doc["exit_status"] == 0
    skipped = {(c["section"], c["name"]): c["detail"] for c in doc["checks"] if c["status"] == "skipped"}
    assert set(skipped) == {("dali", "dali"), ("decode_rate", "decode_rate"), ("loader", "DALI loader")}
    assert all(d.startswith("needs nvidia.dali (No module named 'nvidia") for d in skipped.values())
    assert all(c["status"] == "skipped" for c in doc["checks"])
    rates = {m["case"]: m["values"] for m in doc["measurements"] if m["section"] == "loader"}
    assert set(rates) == {"png shards, torch on CPU", "j2k shards, torch on CPU"}
    assert all(v["images_per_s"] > 0 and v["backend"] == "torch" for v in rates.values())
    assert "gpu_check: skipped dali: dali (needs nvidia.dali" in res.stdout and "gpu_check: OK (exit 0)" in res.stdout
    assert "| dali | dali | -  | - | **skipped** | needs nvidia.dali" in res.stdout


def test_the_gpu_machine_simulation_blocks_what_that_machine_lacks():
    probe = ("import importlib\n"
             "for n in ('omegaconf', 'torch', 'webdataset', 'submitit', 'nvidia.dali'):\n"
             "    try:\n        importlib.import_module(n); print(n, 'ok')\n"
             "    except ImportError:\n        print(n, 'missing')\n")
    res = subprocess.run([sys.executable, "-c", "import tests.machine_sim as m; m.main()", "--gpu-machine", "--block",
                          "nvidia.dali", "--", "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.stdout.split("\n")[:5] == ["omegaconf ok", "torch ok", "webdataset missing", "submitit missing",
                                          "nvidia.dali missing"], res.stderr


def test_a_missing_base_package_exits_2_naming_it(tmp_path):
    res = _sim(["--device", "cpu", "--out", str(tmp_path)], "--block", "fsspec")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("gpu_check: missing Python packages: fsspec (No module")
