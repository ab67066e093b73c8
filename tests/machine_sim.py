"""Run a module as on another machine's Python: some packages missing (an import hook, no mocks).

    python -c "import tests.machine_sim as m; m.main()" --block nvidia.dali -- -m benchmarks.gpu_check ...
    python -c "import tests.machine_sim as m; m.main()" --gpu-machine -- -m benchmarks.gpu_check ...

`--block` makes the named top-level packages (or dotted modules) fail to import, as when they are
not installed; `--gpu-machine` lets only the packages of the lent GPU machine import (README, "GPU
check": torch, torchvision, numpy, Pillow, transformers, safetensors, timm, scikit-learn, fsspec,
tqdm and their dependencies) plus the wheels gpu_check.sh installs from `.whl/` and this project,
so a test sees the ImportError that machine would raise, before a GPU minute is spent on it.
"""

from __future__ import annotations

import importlib.machinery
import re
import runpy
import sys

# the lent GPU machine's packages (distribution names); their dependencies are added from the metadata
GPU_MACHINE = ("torch", "torchvision", "numpy", "pillow", "transformers", "safetensors", "timm", "scikit-learn",
               "fsspec", "tqdm")
WHEELS = ("omegaconf", "antlr4-python3-runtime")  # what benchmarks/gpu_wheels.sh puts in .whl/
PROJECT = {"dinotrain", "shards", "launch", "benchmarks", "tests"}
# optional packages torch probes through their installed metadata (then imports): hiding the module but
# not the metadata would fail where the real machine, having neither or both, does not
PROBED = {"optree"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def import_names(dists) -> set[str]:
    """Top-level import names of `dists` and of everything they require (non-extra), as installed here."""
    from importlib import metadata

    seen: set[str] = set()
    todo = list(dists)
    while todo:
        d = _norm(todo.pop())
        if d in seen:
            continue
        seen.add(d)
        try:
            reqs = metadata.requires(d) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
    return {mod for mod, ds in metadata.packages_distributions().items() if any(_norm(x) in seen for x in ds)}


def _hidden(fullname: str, blocked: set[str], allowed: set[str] | None) -> bool:
    top = fullname.split(".")[0]
    if fullname in blocked or top in blocked:
        return True
    # names with a leading underscore: the interpreter's own (_sysconfigdata_*, C accelerators)
    return allowed is not None and top not in allowed and top not in sys.stdlib_module_names and not top.startswith("_")


def install(blocked: set[str] = frozenset(), gpu_machine: bool = False) -> None:
    """The path finder stops finding the hidden packages: `import` raises the usual ModuleNotFoundError
    and importlib.util.find_spec answers None, exactly as when they are not installed."""
    allowed = (import_names(GPU_MACHINE + WHEELS) | PROJECT | PROBED) if gpu_machine else None
    blocked = set(blocked)

    class HidingPathFinder(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if _hidden(fullname, blocked, allowed):
                return None
            return super().find_spec(fullname, path, target)

    sys.meta_path[:] = [HidingPathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]


def main() -> None:
    """argv: [--block NAME ...] [--gpu-machine] -- -m MODULE ARGS... | -c CODE (run as `python -m` / `-c`)."""
    argv = sys.argv[1:]
    split = argv.index("--")
    opts, rest = argv[:split], argv[split + 1 :]
    blocked = {opts[i + 1] for i, a in enumerate(opts) if a == "--block"}
    install(blocked, "--gpu-machine" in opts)
    if rest[:1] == ["-c"]:
        sys.argv = ["-c", *rest[2:]]
        exec(compile(rest[1], "<machine_sim -c>", "exec"), {"__name__": "__main__"})
        return
    if rest[:1] != ["-m"]:
        raise SystemExit("machine_sim: after -- give -m MODULE [ARGS] or -c CODE")
    sys.argv = [rest[1], *rest[2:]]
    runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
