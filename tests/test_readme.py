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
