"""The mistakes of a first hour (issue 22's table), each made for real with the CLI in a
subprocess: one line naming the setting and the fix, exit 2, no traceback (unless --debug),
nothing written and no process group started; GPU settings that do run on a CPU say what runs.

The machine-dependent rows are about a machine without CUDA (this one); on a GPU machine they
are skipped, since the setting is then valid.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_run_errors import dinotrain, one_error_line, tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "pretrain" / "tiny_cpu.yaml")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA: the setting is valid here")


def _has_xformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("xformers") is not None


@no_cuda
@pytest.mark.parametrize("override, fix", [
    ("train.device=cuda", "set train.device=cpu"),
    ("data.device=gpu", "set data.device=cpu"),
    ("parallel.backend=nccl", "set parallel.backend=gloo"),
    ("model.attn_backend=xformers", "model.attn_backend=auto"),
])
def test_a_setting_this_machine_cannot_run_is_one_line_before_anything_starts(cxr_shards, tmp_path, override, fix):
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run")
    res = dinotrain("train", str(cfg), override)
    line = one_error_line(res, "train")
    assert override in line and fix in line, line
    if override.startswith("model.attn_backend"):
        assert ("not installed" in line) != _has_xformers(), line
    # refused before the loader, the process group and the run folder
    assert not (tmp_path / "run").exists()
    assert "INFO" not in res.stderr, res.stderr[-2000:]


@no_cuda
def test_debug_shows_the_traceback(cxr_shards, tmp_path):
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run")
    res = dinotrain("train", str(cfg), "train.device=cuda", debug=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "dinotrain/train/machine.py" in res.stderr


@no_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_settings_on_the_cpu_say_what_runs(cxr_shards, tmp_path, precision):
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run")
    res = dinotrain("train", str(cfg), f"parallel.mixed_precision={precision}", "launch.gpus_per_node=1")
    assert res.returncode == 0, res.stderr[-3000:]
    notes = [ln for ln in res.stderr.splitlines() if "note: " in ln]
    assert len(notes) == 2, res.stderr[-3000:]
    assert f"parallel.mixed_precision={precision} on the CPU: this run computes in {precision} on the CPU" in notes[0]
    assert "launch.gpus_per_node=1 but this machine has no CUDA device: this run trains on the CPU" in notes[1]
    assert (tmp_path / "run" / "ckpt" / "step_0000002").is_dir()  # and it did run


def test_yaml_file_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_size_per_gpu: 4\n   num_threads: 2\n")  # one space too many on line 3
    line = one_error_line(dinotrain("train", str(bad)), "train")
    assert f"{bad}: not valid YAML at line 3, column 15: mapping values are not allowed" in line, line
    assert "indentation" in line


@pytest.mark.parametrize("override, column", [
    ("data.sources=[{name: cxr, path: /data", 38),  # unclosed: PyYAML runs out at the end
    ('optim.lr="1e-3', 15),
])
def test_yaml_override_error_names_the_column(override, column):
    line = one_error_line(dinotrain("train", TINY, override, "--print-config"), "train")
    assert f"override '{override}': not valid YAML at column {column}:" in line, line
    assert len(override) + 1 == column and "close every bracket and quote" in line


def test_source_path_by_index_on_a_config_without_sources_adds_one(cxr_shards):
    res = dinotrain("train", TINY, f"data.sources.0.path={cxr_shards}", "--print-config")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"  - name: {cxr_shards.name}\n    path: {cxr_shards}\n" in res.stdout
    # and the source is checked as any other: a wrong path is named before anything runs
    line = one_error_line(dinotrain("train", TINY, "data.sources.0.path=/nonexistent/shards"), "train")
    assert "data.sources.0.path=/nonexistent/shards: no such folder" in line


def test_sources_as_bare_paths_are_sources_named_after_their_folders(cxr_shards, tmp_path):
    other = tmp_path / "b" / cxr_shards.name
    res = dinotrain("train", TINY, f"data.sources=[{cxr_shards},{other}/]", "--print-config")
    assert res.returncode == 0, res.stderr[-2000:]
    # two folders of one name: each name made unique with its position
    assert f"  - name: {cxr_shards.name}0\n    path: {cxr_shards}\n" in res.stdout
    assert f"  - name: {cxr_shards.name}1\n    path: {other}/\n" in res.stdout


def test_source_index_past_the_end_says_the_right_form():
    line = one_error_line(dinotrain("train", TINY, "data.sources.2.path=/x", "--print-config"), "train")
    assert "the config has 0 data source(s), so no data.sources.2" in line
    assert "data.sources=[{name: cxr, path: /data/shards}]" in line
