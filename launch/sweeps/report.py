"""`sweep report`: collect every run's results into results.csv, fit scaling laws, plot, tabulate.

Evaluation results are read from each run's `results.json` (written by `dinotrain eval`, in
the format documented in dinotrain/eval/report.py; looked for in <run>/eval/, <run>/ and one
level below).
The end of each run's training (mean of the last lines of metrics.jsonl) adds rows with
task `train` for every key with 'loss' in its name, so a sweep without evaluation still
gets curves (but no fit: a loss has no CI).
Only the report's metric is fitted (an evaluation metric with CIs by default), per series, and
only where `launch.sweeps.scaling.no_fit_reason` (the study's rule) finds nothing against it.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinotrain.run_layout import EVAL, metrics_path
from launch.jobs import status as run_status
from launch.sweeps.scaling import PowerLawFit, fit_power_law, min_sizes, no_fit_reason
from launch.sweeps.sweep import read_run_record, run_dirs

RESULT_NAMES = (f"{EVAL}/results.json", "results.json", "*/results.json")
TRAIN_TAIL = 5  # metrics lines averaged for the end-of-training value (single steps are noisy)


@dataclass
class Row:
    run: str
    state: str
    diversity: str
    size: str
    n_images: float | None
    axes: dict[str, Any]
    task: str
    metric: str
    value: float
    split: str = ""
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def key(self) -> str:
        """How a metric is named on the command line and in the report: task/metric[@split]."""
        base = f"{self.task}/{self.metric}"
        return f"{base}@{self.split}" if self.split and self.split != "test" else base

    @property
    def series(self) -> str:
        """The curve this point belongs to: its diversity set plus any other axis values."""
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.axes.items()) if k not in ("diversity", "size"))
        return f"{self.diversity} ({extra})" if extra else self.diversity


def finite_or_none(v: Any) -> float | None:
    """`v` as a float when it is a finite number, else None (json null, text, nan)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_results(data: Any) -> list[dict[str, Any]]:
    """Records {task, metric, value, split, ci_low, ci_high} of a `dinotrain eval` results.json
    (the format documented in dinotrain/eval/report.py); a record's metric is named
    kind/metric (knn/auroc, linear/auroc, ...) so two methods' AUROCs stay apart. Records
    without a finite value (NaN was written as null) are left out."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError("not a `dinotrain eval` results.json (no 'results' list)")
    out: list[dict[str, Any]] = []
    for r in data["results"]:
        value = finite_or_none(r.get("value"))
        if value is None:
            continue
        metric = f"{r['kind']}/{r['metric']}" if r.get("kind") else str(r["metric"])
        out.append({"task": str(r["task"]), "metric": metric, "value": value, "split": str(r.get("split") or ""),
                    "ci_low": finite_or_none(r.get("ci_low")), "ci_high": finite_or_none(r.get("ci_high"))})
    return out


def _eval_records(run_dir: Path) -> list[dict[str, Any]]:
    for pattern in RESULT_NAMES:
        for path in sorted(run_dir.glob(pattern)):
            try:
                return parse_results(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError, ValueError, KeyError):
                continue  # unreadable, or not an eval results file
    return []


def _train_records(run_dir: Path) -> list[dict[str, Any]]:
    path = metrics_path(run_dir)
    if not path.exists():
        return []
    lines = []
    for ln in path.read_text().splitlines():
        try:
            lines.append(json.loads(ln))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    values: dict[str, list[float]] = defaultdict(list)
    for d in lines:
        for k, v in d.items():
            if "loss" in k and finite_or_none(v) is not None:
                values[k].append(float(v))
    return [{"task": "train", "metric": k, "value": float(sum(v[-TRAIN_TAIL:]) / len(v[-TRAIN_TAIL:])),
             "split": "", "ci_low": None, "ci_high": None} for k, v in values.items()]


def collect(sweep_dir: str | Path) -> list[Row]:
    dirs = run_dirs(sweep_dir)
    states = {s.run_dir: s.state for s in run_status.states_of(dirs)}
    rows: list[Row] = []
    for d in dirs:
        rec = read_run_record(d)
        axes = dict(rec.get("axes", {}))
        n = finite_or_none(rec.get("n_images"))
        if n is None and str(axes.get("size", "")).isdigit():
            n = float(axes["size"])
        for r in _eval_records(d) + _train_records(d):
            rows.append(Row(run=rec["name"], state=states.get(d, "?"), diversity=str(axes.get("diversity", "base")),
                            size=str(axes.get("size", "all")), n_images=n, axes=axes, **r))
    return rows


def write_csv(rows: list[Row], path: Path) -> None:
    axis_keys = sorted({k for r in rows for k in r.axes if k not in ("diversity", "size")})
    cols = ["run", "state", "diversity", "size", "n_images", *axis_keys, "task", "metric", "split",
            "value", "ci_low", "ci_high"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.run, r.state, r.diversity, r.size, "" if r.n_images is None else int(r.n_images),
                        *[r.axes.get(k, "") for k in axis_keys], r.task, r.metric, r.split, r.value,
                        "" if r.ci_low is None else r.ci_low, "" if r.ci_high is None else r.ci_high])


@dataclass(frozen=True)
class NoFit:
    """Why a series has no fit (`no_fit_reason`'s words, or curve_fit's when it found no optimum),
    and its point count."""

    reason: str
    n_points: int


def fit_all(rows: list[Row], form: str, metric: str | None = None) -> dict[tuple[str, str], PowerLawFit | NoFit]:
    """(metric key, series) -> fit of `metric` (default: `choose_metric`'s), or the reason there is
    none: `no_fit_reason`, the study's rule (enough sizes, CIs on every point, the ends' CIs apart)."""
    metric = metric or choose_metric(rows, None)
    points: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if r.key == metric and r.n_images is not None:
            points[(r.key, r.series)].append(r)
    fits: dict[tuple[str, str], PowerLawFit | NoFit] = {}
    for k, pts in sorted(points.items()):
        n, y = [p.n_images for p in pts], [p.value for p in pts]
        reason = no_fit_reason(n, y, [p.ci_low for p in pts], [p.ci_high for p in pts], min_sizes(form))
        try:
            fits[k] = NoFit(reason, len(pts)) if reason else fit_power_law(n, y, form=form)
        except (ValueError, RuntimeError) as e:  # curve_fit found no optimum
            fits[k] = NoFit(str(e), len(pts))
    return fits


# eval kinds that score a reference, not the run's features: never the default metric
BASELINE_KINDS = ("mean_baseline", "constant_mask", "chance", "random_report")


def _is_baseline(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 3 and parts[1] in BASELINE_KINDS


def choose_metric(rows: list[Row], wanted: str | None) -> str | None:
    """`wanted` when the results have it; else an evaluation metric of the runs' own features,
    one with CIs where there is one (a linear-probe AUROC first, the paper's headline), and the
    training loss only when no run was evaluated."""
    keys = sorted({r.key for r in rows})
    if wanted:
        if wanted not in keys:
            raise ValueError(f"metric '{wanted}' not in the results: have {', '.join(keys) or 'none'}")
        return wanted
    evals = [k for k in keys if not k.startswith("train/") and not _is_baseline(k)]
    with_ci = {r.key for r in rows if r.ci_low is not None and r.ci_high is not None}
    evals = [k for k in evals if k in with_ci] or evals  # a fit needs CIs (no_fit_reason)
    evals = [k for k in evals if "@" not in k] or evals  # the test split before val/train splits
    for pick in ("/linear/auroc", "/knn/auroc", "auroc"):
        hits = [k for k in evals if k.endswith(pick)]
        if hits:
            return hits[0]
    if evals:
        return evals[0]
    train = [k for k in keys if k.startswith("train/")]
    return next((k for k in train if k in ("train/total_loss", "train/loss")), train[0] if train else None)


def plot(rows: list[Row], fits: dict, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_series: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.key == metric and r.n_images is not None:
            by_series[r.series].append(r)
    for i, (series, pts) in enumerate(sorted(by_series.items())):
        color = f"C{i % 10}"
        xs = np.array([p.n_images for p in pts], dtype=float)
        ys = np.array([p.value for p in pts], dtype=float)
        ax.scatter(xs, ys, color=color, zorder=3)
        ci = [(p.n_images, p.value, p.ci_low, p.ci_high) for p in pts if p.ci_low is not None and p.ci_high is not None]
        if ci:  # the evaluation's 95% bootstrap intervals
            x, v, lo, hi = (np.array(c, dtype=float) for c in zip(*ci))
            ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt="none", ecolor=color, alpha=0.5, capsize=3)
        fit = fits.get((metric, series))
        label = series
        if isinstance(fit, PowerLawFit):
            grid = np.geomspace(xs.min(), xs.max(), 100)
            ax.plot(grid, fit.predict(grid), color=color)
            label = f"{series}: b = {fit.exponent:.3g}"
        ax.plot([], [], color=color, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs training images")
    ax.grid(True, which="both", alpha=0.3)
    if by_series:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return "0" if abs(v) < 1e-9 else f"{v:.4g}"  # a flat fit's exponent is round-off, not 1e-17


def markdown(name: str, rows: list[Row], fits: dict, metric: str | None, form: str,
             state_counts: dict[str, int]) -> str:
    lines = [f"# Scaling report: {name}", "",
             "Runs: " + ", ".join(f"{k} {v}" for k, v in sorted(state_counts.items())), ""]
    if metric:
        sizes = sorted({r.n_images for r in rows if r.key == metric and r.n_images is not None})
        table: dict[str, dict[float, float]] = defaultdict(dict)
        for r in rows:
            if r.key == metric and r.n_images is not None:
                table[r.series][r.n_images] = r.value
        lines += [f"## {metric} by training images", "",
                  "| series | " + " | ".join(str(int(s)) for s in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for series, vals in sorted(table.items()):
            lines.append(f"| {series} | " + " | ".join(_fmt(vals.get(s)) for s in sizes) + " |")
        lines += ["", "![scaling](scaling.png)", ""]
    lines += [f"## Fits ({form} law, parameters ± standard error)", "",
              f"A law is fitted only through >= {min_sizes(form)} sizes with a 95% CI on every point, the "
              "smallest and the largest size's CIs apart (the study's rule); else no fit (why).", "",
              "| metric | series | points | fit | exponent b | R² |", "|---|---|---:|---|---:|---:|"]
    for (key, series), fit in sorted(fits.items()):
        if isinstance(fit, PowerLawFit):
            b = fit.exponent
            se = fit.stderr["b"]
            lines.append(f"| {key} | {series} | {fit.n_points} | {fit.formula()} | "
                         f"{_fmt(b)}{'' if math.isnan(se) else ' ± ' + _fmt(se)} | {_fmt(fit.r2)} |")
        else:
            lines.append(f"| {key} | {series} | {fit.n_points} | no fit ({fit.reason}) | | |")
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: str | Path, metric: str | None = None, form: str | None = None) -> dict[str, Path]:
    """results.csv + scaling.png + report.md in the sweep folder; returns their paths."""
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    if not run_dirs(sweep_dir):
        raise FileNotFoundError(f"{sweep_dir}: no runs (runs/*/run.json); is this a sweep folder from `dinotrain sweep`?")
    spec_path = sweep_dir / "sweep.yaml"
    spec = OmegaConf.load(spec_path) if spec_path.exists() else OmegaConf.create({})
    settings = spec.get("report") or {}
    form = form or str(settings.get("form", "power"))
    rows = collect(sweep_dir)
    metric = choose_metric(rows, metric or settings.get("metric"))
    fits = fit_all(rows, form, metric)
    counts: dict[str, int] = defaultdict(int)
    for s in run_status.states_of(run_dirs(sweep_dir)):
        counts[s.state] += 1
    out = {"csv": sweep_dir / "results.csv", "png": sweep_dir / "scaling.png", "md": sweep_dir / "report.md"}
    write_csv(rows, out["csv"])
    plot(rows, fits, metric or "", out["png"])
    out["md"].write_text(markdown(str(spec.get("name") or sweep_dir.name), rows, fits, metric, form, counts))
    return out
