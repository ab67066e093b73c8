"""Shared helpers of the ratio benchmarks: timing, machine description, results table and JSON.

Convention for a benchmark module `benchmarks/<name>.py` (found by `python -m benchmarks`):

    from benchmarks.common import cli, result, ratio_row, timeit

    def run(quick: bool = False) -> dict:
        base = timeit(lambda: baseline(), repeat=3 if quick else 7)
        cand = timeit(lambda: candidate(), repeat=3 if quick else 7)
        return result(
            "augment",                                    # = the module name
            "DALI multi-crop vs a PIL/numpy baseline",    # one line for the table
            [ratio_row("2x224 + 8x98 crops, 64 images", base, cand,
                       baseline="PIL+numpy", candidate="DALI CPU", unit="s")],
            notes="what the ratio means, and its caveats",
            params={"images": 64},                       # anything worth recording
        )

    if __name__ == "__main__":
        cli(run)                                          # python -m benchmarks.augment [--quick]

- `run(quick)` must return the dict made by `result(...)`. `quick=True` is used by tests and
  by `python -m benchmarks --quick`: it should finish in seconds. Baseline and candidate are run
  in the same process, so the ratio (baseline time / candidate time, > 1 = candidate faster)
  means something on any machine, whatever its absolute speed.
- A module that cannot run here (e.g. needs a GPU or data) raises `Skip("why")` from `run`.
- Modules with only a `main()` are called too; they should then write their JSON with
  `write_json(name, result(...))` so the runner can collect it.

API (kept tiny on purpose): `timeit`, `Timing`, `ratio_row`, `result`, `machine`,
`write_json`, `format_table`, `cli`, `Skip`, `OUT_DIR`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"


class Skip(Exception):
    """Raised by a benchmark's `run` when it cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of `repeat` timed calls (after warm-up)."""

    median: float
    min: float
    mean: float
    runs: tuple[float, ...]


def timeit(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 1) -> Timing:
    """Time `fn()` `repeat` times after `warmup` untimed calls; the median is the figure to use.

    The median rather than the mean: on shared machines a few runs get descheduled, and the
    median ignores them while the minimum flatters.
    """
    if repeat < 1:
        raise ValueError(f"timeit: repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return Timing(statistics.median(runs), min(runs), statistics.fmean(runs), tuple(runs))


def _seconds(t: Timing | float) -> float:
    return t.median if isinstance(t, Timing) else float(t)


def ratio_row(
    case: str,
    baseline: Timing | float,
    candidate: Timing | float,
    *,
    baseline_name: str = "baseline",
    candidate_name: str = "candidate",
    unit: str = "s",
    higher_is_better: bool = False,
    **extra: Any,
) -> dict:
    """One table row. `baseline`/`candidate` are Timings or plain numbers in `unit`.

    ratio = baseline / candidate for costs (seconds: > 1 means the candidate is faster) and
    candidate / baseline when `higher_is_better` (throughputs: > 1 means the candidate is better),
    so in every row a ratio above 1 favours the candidate.
    """
    b, c = _seconds(baseline), _seconds(candidate)
    if higher_is_better:
        ratio = c / b if b > 0 else float("inf")
    else:
        ratio = b / c if c > 0 else float("inf")
    row = {
        "case": case,
        "baseline": baseline_name,
        "candidate": candidate_name,
        "baseline_value": b,
        "candidate_value": c,
        "unit": unit,
        "ratio": ratio,
        "higher_is_better": higher_is_better,
    }
    for key, t in (("baseline_timing", baseline), ("candidate_timing", candidate)):
        if isinstance(t, Timing):
            row[key] = asdict(t)
    row.update(extra)
    return row


def result(name: str, title: str, rows: list[dict], *, notes: str = "", params: dict | None = None) -> dict:
    """The dict a benchmark's `run` returns (and the JSON written for it)."""
    return {
        "name": name,
        "title": title,
        "rows": list(rows),
        "notes": notes,
        "params": dict(params or {}),
        "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on: CPU, cores usable by this process, memory, torch, GPU."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:  # torch is a project dependency, but the description must not fail without it
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_json(name: str, data: dict, out_dir: str | Path | None = None) -> Path:
    """Write `data` to `<out_dir or benchmarks/out>/<name>.json` atomically; returns the path."""
    out = Path(out_dir) if out_dir is not None else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "inf"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def format_table(res: dict) -> str:
    """A markdown table of one result: case, baseline, candidate, values and the ratio."""
    lines = [
        f"### {res['name']}: {res['title']}",
        "",
        "| case | baseline | candidate | baseline value | candidate value | ratio (>1 favours candidate) |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['case']} | {r['baseline']} | {r['candidate']} | {_fmt(r['baseline_value'])} {r['unit']} "
            f"| {_fmt(r['candidate_value'])} {r['unit']} | **{r['ratio']:.2f}x** |"
        )
    if res.get("notes"):
        lines += ["", res["notes"]]
    return "\n".join(lines)


def cli(run: Callable[..., dict], argv: list[str] | None = None) -> dict:
    """`python -m benchmarks.<name> [--quick] [--out DIR]`: run, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=(run.__module__ or "benchmark"))
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--out", default=None, help=f"JSON folder (default {OUT_DIR})")
    args = parser.parse_args(argv)
    res = run(quick=args.quick)
    print(format_table(res))
    print(f"\nwrote {write_json(res['name'], res, args.out)}")
    return res
