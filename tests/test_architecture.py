"""The plan of the house, from the imports (ast, also the lazy ones inside functions): shards and the
library (dinotrain) import nothing of each other or of launch; no loop between dinotrain's folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def arch():
    spec = importlib.util.spec_from_file_location("architecture", REPO / "scripts" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _library_folders(arch, graph):
    return {a: deps for a, deps in arch.folder_graph(graph).items() if a.split(".")[0] == "dinotrain"}


def test_the_floors_and_folders_of_this_checkout(arch):
    graph = arch.import_graph(REPO)
    assert len(graph) > 100 and "dinotrain.train.preflight" in graph["launch.jobs.submit"]  # it reads the real tree (a lazy import)
    assert arch.forbidden_arrows(graph) == []  # dinotrain -> launch|shards, shards -> dinotrain|launch
    assert arch.cycles(_library_folders(arch, graph)) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TREE = {"shards/__init__.py": "", "shards/build.py": "import os\n",
        "dinotrain/__init__.py": "", "dinotrain/errors.py": "",
        "dinotrain/models/__init__.py": "", "dinotrain/models/vit.py": "from dinotrain import errors\n",
        "dinotrain/train/__init__.py": "", "dinotrain/train/loop.py": "from ..models import vit\n",
        "dinotrain/run_layout.py": "from dinotrain.models.vit import x\n",
        "launch/__init__.py": "", "launch/jobs/task.py": "import dinotrain.train.loop\nfrom shards import build\n"}


def test_a_clean_synthetic_tree_passes(arch, tmp_path):
    _write(tmp_path, TREE)
    graph = arch.import_graph(tmp_path)
    assert graph["dinotrain.train.loop"] == {"dinotrain.models", "dinotrain.models.vit"}  # relative, resolved
    assert arch.forbidden_arrows(graph) == [] and arch.cycles(_library_folders(arch, graph)) == []


@pytest.mark.parametrize("file, text, broken", [
    # a lazy import inside a function is an arrow too
    ("dinotrain/train/loop.py", "def f():\n    from launch.jobs import task\n", ("dinotrain.train.loop", "launch.jobs.task")),
    ("dinotrain/models/vit.py", "import shards.build\n", ("dinotrain.models.vit", "shards.build")),
    ("shards/build.py", "from dinotrain import errors\n", ("shards.build", "dinotrain.errors")),
    ("shards/build.py", "def f():\n    import launch.jobs.task\n", ("shards.build", "launch.jobs.task")),
])
def test_an_arrow_against_the_floors_fails(arch, tmp_path, file, text, broken):
    _write(tmp_path, {**TREE, file: text})
    assert broken in arch.forbidden_arrows(arch.import_graph(tmp_path))


@pytest.mark.parametrize("file, text, loop", [
    # models -> run_layout -> models: a loop through a module at dinotrain's top (the old export CLI's)
    ("dinotrain/models/cli.py", "def main():\n    from dinotrain.run_layout import load\n",
     ["dinotrain.models", "dinotrain.run_layout"]),
    ("dinotrain/models/heads.py", "from dinotrain.train import loop\n", ["dinotrain.models", "dinotrain.train"]),
])
def test_a_loop_between_library_folders_fails(arch, tmp_path, file, text, loop):
    _write(tmp_path, {**TREE, file: text})
    assert arch.cycles(_library_folders(arch, arch.import_graph(tmp_path))) == [loop]
