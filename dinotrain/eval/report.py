"""Results files of `dinotrain eval` (read by the sweep report; keep this format stable).

`results.json`:

    {"models": ["runs/cxr_base", "random:vit_base"],      # MODEL arguments, in order
     "tasks": ["jsrt_nodule", ...],
     "settings": {"resolution": 518, ...},                # how the numbers were made
     "results": [
       {"model": "runs/cxr_base",   # the MODEL argument
        "task": "jsrt_nodule",      # spec name
        "kind": "linear",           # method: knn | linear | ridge | mean_baseline | linear_head |
                                    #   constant_mask | alignment | chance | report_retrieval | random_report
        "metric": "auroc",          # auroc | auprc | accuracy | mae | r2 | dice_<structure> |
                                    #   i2t_R@k | t2i_R@k | rougeL | bleu4
        "split": "test",
        "value": 0.91,
        "ci_low": 0.85, "ci_high": 0.96,   # 95% percentile bootstrap (patient-grouped); NaN -> null
        "n": 50,                           # evaluated items (images; unique texts for t2i)
        "chance": 0.5},                    # classification only: the score of an uninformative
       ...]}                               #   predictor (AUROC 0.5, AUPRC prevalence, majority accuracy)

`results.md`: one table per task, rows = (kind, metric), one column per model with
`value [ci_low, ci_high]`. `results.png`: per task, bars per model with CI whiskers, n under
each metric, and a dashed chance line where chance is defined (see `chance_level`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dinotrain import atomic


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # strict JSON has no NaN
    return v


def write_json(out: Path, models: list[str], tasks: list[str], records: list[dict], settings: dict) -> Path:
    data = {"models": models, "tasks": tasks, "settings": settings,
            "results": [{k: _clean(v) for k, v in r.items()} for r in records]}
    return atomic.write_json(out / "results.json", data, indent=1, allow_nan=False)


def write_paired(out: Path, reference: str, paired: list[dict]) -> Path:
    """paired.json: {"reference": MODEL, "results": [{model, reference, task, kind, metric, value,
    reference_value, delta, ci_low, ci_high, n}]}: the CI is the paired bootstrap CI of delta."""
    path = Path(out) / "paired.json"
    tmp = path.with_suffix(".json.tmp")
    data = {"reference": reference, "results": [{k: _clean(v) for k, v in r.items()} for r in paired]}
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def read_results(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _fmt(r: dict | None) -> str:
    if r is None or r["value"] is None:
        return "–"
    v = r["value"]
    digits = 2 if r["metric"] in ("mae", "bleu4") else 3
    s = f"{v:.{digits}f}"
    if r.get("ci_low") is not None and r.get("ci_high") is not None:
        s += f" [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"
    return s


def markdown(models: list[str], records: list[dict]) -> str:
    split = "Validation split (test not read)" if any(r.get("split") == "val" for r in records) else "Test split"
    lines = ["# dinotrain eval results", "",
             f"{split}; 95% bootstrap CIs in brackets; n = evaluated items.", ""]
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    for task, rs in by_task.items():
        lines += [f"## {task}", "", "| kind | metric | n | " + " | ".join(f"`{m}`" for m in models) + " |",
                  "|---|---|---|" + "---|" * len(models)]
        rows: dict[tuple[str, str], dict[str, dict]] = {}
        for r in rs:
            rows.setdefault((r["kind"], r["metric"]), {})[r["model"]] = r
        for (kind, metric), cells in rows.items():
            n = next(iter(cells.values()))["n"]
            lines.append(f"| {kind} | {metric} | {n} | " + " | ".join(_fmt(cells.get(m)) for m in models) + " |")
        lines.append("")
    return "\n".join(lines)


# chance of metrics whose uninformative value does not depend on the data
_FIXED_CHANCE = {"auroc": 0.5, "r2": 0.0}


def chance_level(kind: str, metric: str, records: list[dict]) -> float | None:
    """The dashed line of a (kind, metric) group: the records' own `chance` (classification), the
    value of a `chance` record of that metric (retrieval), else AUROC 0.5 / R2 0; None when undefined
    (Dice has its constant-mask baseline bar instead)."""
    own = [r["chance"] for r in records if (r["kind"], r["metric"]) == (kind, metric) and r.get("chance") is not None]
    if own:
        return float(own[0])
    ref = [r["value"] for r in records if r["kind"] == "chance" and r["metric"] == metric and r["value"] is not None]
    if ref:
        return float(ref[0])
    return _FIXED_CHANCE.get(metric)


def _bars(ax, task_records: list[dict], models: list[str]) -> None:
    """One task's panel: bars per (kind, metric) and model with whiskers, n in the labels, chance lines."""
    import numpy as np

    keys = list(dict.fromkeys((r["kind"], r["metric"]) for r in task_records))
    width = 0.8 / max(1, len(models))
    for j, m in enumerate(models):
        vals, lo, hi = [], [], []
        for k in keys:
            r = next((r for r in task_records if (r["kind"], r["metric"]) == k and r["model"] == m), None)
            v = r["value"] if r and r["value"] is not None else np.nan
            vals.append(v)
            lo.append(v - r["ci_low"] if r and r.get("ci_low") is not None else 0)
            hi.append(r["ci_high"] - v if r and r.get("ci_high") is not None else 0)
        xs = np.arange(len(keys)) + j * width
        ax.bar(xs, vals, width, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=2, label=m)
    labelled = False
    for i, (kind, metric) in enumerate(keys):
        c = chance_level(kind, metric, task_records)
        if c is not None and kind != "chance":
            ax.hlines(c, i - width / 2, i + width * (len(models) - 0.5), colors="black", linestyles="--",
                      linewidth=1.2, label=None if labelled else "chance", zorder=3)
            labelled = True
    ns = {k: next(r["n"] for r in task_records if (r["kind"], r["metric"]) == k) for k in keys}
    ax.set_xticks(np.arange(len(keys)) + width * (len(models) - 1) / 2)
    ax.set_xticklabels([f"{k}\n{m}\nn={ns[(k, m)]}" for k, m in keys], fontsize=7)
    lows = [r["value"] for r in task_records if r["value"] is not None]
    ax.set_ylim(min(0.0, min(lows, default=0.0)) - 0.05, 1.05)  # R2 can be negative


def plot(out: Path, models: list[str], records: list[dict]) -> Path | None:
    """Per task: bars per (kind, metric) and model, bootstrap whiskers, n, and chance lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in records))
    if not tasks:
        return None
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 3.1 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        rs = [r for r in records if r["task"] == task and r["metric"] not in ("mae", "bleu4")]
        _bars(ax, rs, models)
        n = max((r["n"] for r in rs), default=0)
        ax.set_title(f"{task} (test split, n={n}; whiskers: 95% bootstrap CI)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(out: str | Path, models: list[str], tasks: list[str], records: list[dict],
              settings: dict, with_plot: bool = True) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out, models, tasks, records, settings)}
    clean = [{k: _clean(v) for k, v in r.items()} for r in records]
    md = out / "results.md"
    md.write_text(markdown(models, clean))
    paths["md"] = md
    if with_plot:
        p = plot(out, models, clean)
        if p is not None:
            paths["png"] = p
    return paths
