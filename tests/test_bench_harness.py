"""The benchmark runner and its shared helpers, on small real benchmark modules written by the test."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from benchmarks.__main__ import discover, main
from benchmarks.common import Timing, format_table, machine, ratio_row, result, timeit, write_json


def test_timeit_measures_sleep():
    t = timeit(lambda: time.sleep(0.02), repeat=3, warmup=0)
    assert isinstance(t, Timing) and len(t.runs) == 3
    assert 0.019 <= t.min <= t.median <= max(t.runs) < 0.5
    with pytest.raises(ValueError, match="repeat"):
        timeit(lambda: None, repeat=0)


def test_ratio_direction():
    assert ratio_row("c", 2.0, 0.5)["ratio"] == 4.0  # costs: baseline / candidate
    assert ratio_row("c", 100.0, 300.0, higher_is_better=True, unit="img/s")["ratio"] == 3.0
    t = Timing(0.5, 0.4, 0.5, (0.4, 0.5, 0.6))
    row = ratio_row("c", 1.0, t, baseline_name="numpy", candidate_name="dali", images=8)
    assert row["candidate_value"] == 0.5 and tuple(row["candidate_timing"]["runs"]) == (0.4, 0.5, 0.6)
    assert row["images"] == 8 and row["baseline"] == "numpy"


def test_machine_and_table():
    info = machine()
    assert info["cpus_usable"] >= 1 and info["python"].count(".") == 2
    res = result("x", "title", [ratio_row("case a", 3.0, 1.5)], notes="why")
    md = format_table(res)
    assert "| case a |" in md and "**2.00x**" in md and md.endswith("why")


BENCH_OK = '''
from benchmarks.common import result, ratio_row, timeit

def run(quick=False):
    n = 2_000 if quick else 200_000
    data = list(range(n, 0, -1))
    base = timeit(lambda: sorted(data, key=lambda v: -v), repeat=3)
    cand = timeit(lambda: sorted(data), repeat=3)
    return result("{name}", "sorted with a key vs without", [ratio_row("n=%d" % n, base, cand)],
                  params={{"n": n}})
'''

BENCH_MAIN = '''
from benchmarks.common import result, ratio_row, write_json
import os

def main():
    write_json("{name}", result("{name}", "main-only", [ratio_row("fixed", 2.0, 1.0)]), os.environ["BENCH_OUT"])
'''


@pytest.fixture()
def bench_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "common.py").write_text("")  # not a benchmark
    (pkg / "alpha.py").write_text(textwrap.dedent(BENCH_OK.format(name="alpha")))
    (pkg / "beta.py").write_text(textwrap.dedent(BENCH_MAIN.format(name="beta")))
    (pkg / "gamma.py").write_text("from benchmarks.common import Skip\ndef run(quick=False):\n    raise Skip('needs a GPU')\n")
    (pkg / "delta.py").write_text("def run(quick=False):\n    raise RuntimeError('boom')\n")
    # a main()-only module that parses argv: it must not see the runner's --quick
    (pkg / "epsilon.py").write_text(
        "import argparse, sys\ndef main():\n    argparse.ArgumentParser().parse_args()\n    sys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BENCH_OUT", str(tmp_path / "out"))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("fakebench")]:
        del sys.modules[name]


def test_runner_writes_markdown_and_json(bench_pkg, tmp_path, capsys):
    assert discover(bench_pkg) == ["alpha", "beta", "delta", "epsilon", "gamma"]
    md, out = tmp_path / "BENCHMARKS.md", tmp_path / "out"
    rc = main(["--quick", "--out", str(out), "--markdown", str(md)], folder=bench_pkg, package="fakebench")
    assert rc == 1  # delta failed, and says so
    summary = json.loads((out / "all.json").read_text())
    status = {r["name"]: r["status"] for r in summary["results"]}
    assert status == {"alpha": "ok", "beta": "ok", "delta": "error", "epsilon": "error", "gamma": "skipped"}
    alpha = json.loads((out / "alpha.json").read_text())
    assert alpha["params"] == {"n": 2000} and alpha["rows"][0]["ratio"] > 0
    text = md.read_text()
    assert summary["machine"]["cpu"] in text and summary["date"] in text
    assert "| beta | fixed | 2.00x |" in text
    assert "delta | - | - | error: RuntimeError: boom" in text
    assert "gamma | - | - | skipped: needs a GPU" in text
    assert "epsilon.py: main() exited with status 3" in text


def test_runner_only_and_unknown(bench_pkg, tmp_path, capsys):
    md, out = tmp_path / "B.md", tmp_path / "out"
    assert main(["--only", "alpha", "--quick", "--out", str(out), "--markdown", str(md)],
                folder=bench_pkg, package="fakebench") == 0
    assert [r["name"] for r in json.loads((out / "all.json").read_text())["results"]] == ["alpha"]
    assert main(["--only", "nope", "--out", str(out), "--markdown", str(md)], folder=bench_pkg,
                package="fakebench") == 2
    assert "unknown benchmark(s) nope" in capsys.readouterr().err
    # as a subcommand: the CLI parses with add_arguments and hands over the Namespace
    import argparse

    from benchmarks.__main__ import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--list"])
    assert main(ns, folder=bench_pkg, package="fakebench") == 0
    assert capsys.readouterr().out.split() == ["alpha", "beta", "delta", "epsilon", "gamma"]


def test_write_json_is_atomic_and_readable(tmp_path):
    p = write_json("x", {"a": 1, "t": Timing(1, 1, 1, (1,))}, tmp_path)
    assert json.loads(p.read_text())["a"] == 1 and not list(tmp_path.glob("*.tmp"))
