"""The `dinotrain` console script: subcommands, help at every level, config errors exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dinotrain.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["shards", "train", "launch", "sweep", "eval", "export", "verify", "demo", "data", "study", "curate"]


def dinotrain(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dinotrain", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_data_and_launch_commands_do_not_import_the_trainer():
    code = ("import sys, dinotrain.data.cli, launch.jobs.cli, dinotrain.export_cli, dinotrain.eval.loading; "
            "print(sorted(m for m in sys.modules if m.startswith('dinotrain.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_lists_every_subcommand():
    out = dinotrain("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert f"\n    {name}" in out.stdout
    assert "examples:" in out.stdout
    assert set(SUBCOMMANDS) == set(COMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_has_an_example(name):
    out = dinotrain(name, "--help")
    assert out.returncode == 0, out.stderr
    assert "example" in out.stdout and f"dinotrain {name}" in out.stdout


def test_no_command_prints_help_and_exits_2():
    out = dinotrain()
    assert out.returncode == 2 and "commands" in out.stdout


def test_print_config_resolves_file_and_overrides():
    out = dinotrain("train", "--print-config", "configs/pretrain/vitb14_cxr.yaml", "optim.lr=1e-3",
                    "train.max_steps=100", "optim.warmup_steps=10", "ssl.warmup_teacher_temp_steps=30",
                    "optim.freeze_last_layer_steps=1")
    assert out.returncode == 0, out.stderr
    assert "lr: 0.001" in out.stdout and "max_steps: 100" in out.stdout and "name: cxr" in out.stdout


def test_print_config_with_only_overrides():
    out = dinotrain("train", "--print-config", "model.arch=vit_small")
    assert out.returncode == 0, out.stderr
    assert "arch: vit_small" in out.stdout


@pytest.mark.parametrize(
    "override, expect",
    [
        ("optim.lrr=1e-3", "did you mean 'optim.lr'"),
        ("train.max_steps=abc", "train.max_steps"),
        ("parallel.activation_checkpointing=some", "none, selective, full"),
    ],
)
def test_bad_config_exits_2_with_one_line(override, expect):
    out = dinotrain("train", "--print-config", override)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], out.stderr


def test_missing_config_file_is_named():
    out = dinotrain("train", "--print-config", "configs/nope.yaml")
    assert out.returncode == 2 and "configs/nope.yaml" in out.stderr
