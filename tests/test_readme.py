"""README stays true to the code: the set-up commands and the generated config reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _updater():
    spec = importlib.util.spec_from_file_location("update_config_reference", REPO / "scripts/update_config_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["bash scripts/setup.sh", ".venv/bin/python -m pytest"]
    ci = (REPO / ".ci/run").read_text()
    assert "bash scripts/setup.sh" in ci and ".venv/bin/python -m pytest" in ci


def test_config_reference_in_sync_with_schema():
    text = (REPO / "README.md").read_text()
    assert _updater().updated(text) == text, "run: .venv/bin/python scripts/update_config_reference.py"


def _block_after(text: str, heading: str, lang: str) -> str:
    """The first ```lang block after `heading`."""
    return text.split(heading, 1)[1].split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_cpu_first_hour_runs_as_written(test_data, tmp_path):
    """The README's "CPU first hour" commands, run as a user would from the repository root (here a
    folder with the repository's configs and a `.venv/bin/dinotrain` of this checkout), on 48 real
    radiographs; then its Python block on a real image."""
    import json
    import os
    import re
    import shutil
    import subprocess
    import sys

    text = (REPO / "README.md").read_text()
    heading = "## CPU first hour"
    script = _block_after(text, heading, "bash")
    images = tmp_path / "my_images"
    images.mkdir()
    for p in sorted((test_data / "jsrt" / "images").iterdir())[::5][:48]:
        shutil.copy(p, images / p.name)
    script = re.sub(r"^IMAGES=.*$", f"IMAGES={images}", script, flags=re.M)
    script = re.sub(r"^EVAL_DATA=.*$", f"EVAL_DATA={test_data}", script, flags=re.M)
    root = tmp_path / "repo"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / "configs").symlink_to(REPO / "configs")
    exe = root / ".venv" / "bin" / "dinotrain"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m dinotrain \"$@\"\n")
    exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "DINOTRAIN_DEBUG")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads((root / "shards" / "mine" / "manifest.json").read_text())["totals"]["written"] == 48
    assert (root / "runs" / "first" / "ckpt" / "step_0000020").is_dir()
    assert json.loads((root / "eval_first" / "results.json").read_text())["settings"]["resolution"] == 56
    assert "dinotrain eval: at 56 px, the global crop size runs/first trained at" in res.stderr
    assert (root / "exported" / "first" / "preprocessor_config.json").is_file()

    code = _block_after(text, heading, "python")
    shutil.copy(images / sorted(os.listdir(images))[0], root / "my_xray.png")
    res = subprocess.run([sys.executable, "-c", code + "\nprint(tuple(cls.shape))"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "(1, 192)"
