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

import importlib.abc
import runpy
import sys

# the lent GPU machine's packages and their dependencies (import names)
GPU_MACHINE = {
    "torch", "torchgen", "functorch", "torchvision", "triton", "numpy", "PIL", "transformers", "safetensors", "timm",
    "sklearn", "scipy", "joblib", "threadpoolctl", "fsspec", "tqdm", "huggingface_hub", "tokenizers", "regex",
    "requests", "urllib3", "idna", "certifi", "charset_normalizer", "yaml", "packaging", "filelock", "jinja2",
    "markupsafe", "sympy", "mpmath", "networkx", "typing_extensions", "nvidia", "setuptools", "pkg_resources",
    "_distutils_hack", "_virtualenv",
}
WHEELS = {"omegaconf", "antlr4"}  # what benchmarks/gpu_check.sh installs from .whl/ (README, "GPU check")
PROJECT = {"dinotrain", "shards", "launch", "benchmarks", "tests"}


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, blocked: set[str], allowed: set[str] | None):
        self.blocked, self.allowed = blocked, allowed

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if fullname in self.blocked or top in self.blocked:
            raise ModuleNotFoundError(f"No module named '{fullname}' (blocked by tests/machine_sim.py)", name=fullname)
        if self.allowed is not None and top not in self.allowed and top not in sys.stdlib_module_names:
            raise ModuleNotFoundError(f"No module named '{top}' (not on the GPU machine: tests/machine_sim.py)",
                                      name=top)
        return None  # let the normal finders look


def install(blocked: set[str] = frozenset(), gpu_machine: bool = False) -> None:
    allowed = (GPU_MACHINE | WHEELS | PROJECT) if gpu_machine else None
    sys.meta_path.insert(0, _Finder(set(blocked), allowed))


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
