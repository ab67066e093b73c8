"""Regenerate the config reference in README.md from the schema: python scripts/update_config_reference.py"""

from __future__ import annotations

import sys
from pathlib import Path

from dinotrain.config import reference_markdown

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def updated(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "README.md"
    text = path.read_text()
    new = updated(text)
    if new != text:
        path.write_text(new)
        print("README.md config reference updated")
    sys.exit(0)
