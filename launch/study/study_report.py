"""The laptop study's outputs: study.json, the claims computed from it, report.md, plots, seeds.

`render(OUT)` rebuilds report.md and the plots from OUT/study.json alone (plus OUT/seeds.json and
the recipe's ablation notes when present), so a report can be regenerated without rerunning.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dinotrain.run_layout import RUN_RECORD, config_path, metrics_path
from launch.study.settings import laptop
from launch.sweeps.report import finite_or_none

STUDY_KEYS = ("seed", "minutes", "tasks", "continual", "scaling")


# ----------------------------------------------------------------------------- study.json
def primary_metric(task: str) -> str:
    """The one number a task is judged by (higher is better for every one of them): its kind says."""
    from dinotrain.eval.kinds import kind_of
    from dinotrain.eval.specs import load_spec

    spec = load_spec(task)
    metric = kind_of(spec).headline_metric(spec)
    if metric is None:
        raise ValueError(f"task '{task}' ({spec.kind}) has no headline metric in the study")
    return metric


def _comparisons(result: dict, model: str, names: tuple[str, str]) -> dict[str, dict]:
    """task -> {metric key -> {names[0], names[1], delta, delta_ci, n_test, *_ci}} from evaluate_models."""
    records = {(r["model"], r["task"], f"{r['kind']}/{r['metric']}"): r for r in result["records"]}

    def ci(k: tuple) -> list | None:
        r = records.get(k)
        return None if r is None else [finite_or_none(r["ci_low"]), finite_or_none(r["ci_high"])]

    def probe(k: tuple) -> dict | None:
        return records.get(k, {}).get("probe")

    out: dict[str, dict] = defaultdict(dict)
    for p in result.get("paired") or []:
        if p["model"] != model:
            continue
        key = f"{p['kind']}/{p['metric']}"
        out[p["task"]][key] = {
            names[0]: p["value"], names[1]: p["reference_value"], "delta": p["delta"],
            "delta_ci": [finite_or_none(p["ci_low"]), finite_or_none(p["ci_high"])], "n_test": p["n"],
            f"{names[0]}_ci": ci((p["model"], p["task"], key)),
            f"{names[1]}_ci": ci((p["reference"], p["task"], key)),
            "probe": {names[0]: probe((p["model"], p["task"], key)), names[1]: probe((p["reference"], p["task"], key))}}
    return out


def _headline(comparisons: dict[str, dict], tasks: list[str], names: tuple[str, str]) -> dict[str, dict]:
    from dinotrain.eval.specs import load_spec

    out = {}
    for task in tasks:
        metric = primary_metric(task)
        c = comparisons.get(task, {}).get(metric)
        if c is None:
            continue
        out[task] = {"metric": metric, **{k: c[k] for k in (*names, "delta", "delta_ci")},
                     **({"n_test": c["n_test"]} if "n_test" in c else {}),
                     "kind": load_spec(task).kind, "ci": {n: c[f"{n}_ci"] for n in names},
                     **({"probe": c["probe"]} if any(c.get("probe", {}).values()) else {}),
                     "other_metrics": {k: {kk: v[kk] for kk in (*names, "delta", "delta_ci")}
                                       for k, v in comparisons[task].items() if k != metric}}
    return out


def scaling_rows(sweep_dirs: list[Path], tasks: list[str]) -> list[dict]:
    """Every sweep run's headline metric on the scaling tasks (from its own eval/results.json)."""
    from launch.sweeps.report import collect

    if not sweep_dirs:
        return []
    wanted = {t: primary_metric(t) for t in tasks}
    rows = []
    for r in collect(sweep_dirs[0].parent.parent):
        if wanted.get(r.task) == r.metric and r.n_images is not None:
            rows.append({"diversity": r.diversity, "images": int(r.n_images), "task": r.task, "metric": r.metric,
                         "value": r.value, "ci": [r.ci_low, r.ci_high], "run": r.run})
    return sorted(rows, key=lambda x: (x["task"], x["diversity"], x["images"]))


def curve_rows(result: dict | None, last: dict | None, steps: dict[str, int], tasks: list[str]) -> dict[str, dict]:
    """task -> the learning curve of its headline metric: per checkpoint the value, its CI and the
    paired difference from step 0, and the last checkpoint minus the one before (paired CI) with the
    verdict it supports: rising (CI above 0), falling (below), or flat (includes 0)."""
    if not result:
        return {}
    records = {(r["model"], r["task"], f"{r['kind']}/{r['metric']}"): r for r in result["records"]}
    paired = {(p["model"], p["task"], f"{p['kind']}/{p['metric']}"): p for p in result.get("paired") or []}
    out = {}
    for task in tasks:
        metric = primary_metric(task)
        points = []
        for model, step in sorted(steps.items(), key=lambda kv: kv[1]):
            r = records.get((model, task, metric))
            if r is None:
                continue
            d = paired.get((model, task, metric))
            points.append({"step": step, "value": r["value"], "ci": [finite_or_none(r["ci_low"]), finite_or_none(r["ci_high"])],
                           "n_test": r["n"], **({"delta_from_step0": d["delta"],
                                                 "delta_ci": [finite_or_none(d["ci_low"]), finite_or_none(d["ci_high"])]}
                                                if d else {})})
        if not points:
            continue
        row: dict[str, Any] = {"metric": metric, "points": points}
        lp = next((p for p in (last or {}).get("paired") or [] if p["task"] == task
                   and f"{p['kind']}/{p['metric']}" == metric), None)
        if lp is not None:
            ci = [finite_or_none(lp["ci_low"]), finite_or_none(lp["ci_high"])]
            verdict = "rising" if (ci[0] or -1) > 0 else "falling" if (ci[1] if ci[1] is not None else 1) < 0 else "flat"
            row["last_step"] = {"from": points[-2]["step"] if len(points) > 1 else None, "to": points[-1]["step"],
                                "delta": lp["delta"], "delta_ci": ci, "verdict": verdict}
            row["more_steps_to_clear"] = steps_to_clear(points, lp["delta"])
        out[task] = row
    return out


def steps_to_clear(points: list[dict], last_delta: float) -> int | None:
    """Steps beyond the last checkpoint until the paired CI of (checkpoint − step 0) would clear 0 if the
    last interval's rate held and the CI kept its width: 0 when it already clears, None when the last
    interval did not rise (a linear extrapolation: a floor on what the claim needs, not a forecast)."""
    end = points[-1]
    lo, hi = (end.get("delta_ci") or [None, None])
    if lo is None or hi is None or len(points) < 2:
        return None
    if lo > 0:
        return 0
    interval = end["step"] - points[-2]["step"]
    if last_delta is None or last_delta <= 0 or interval <= 0:
        return None
    return int(math.ceil(-lo / (last_delta / interval)))


def assemble(opts, plan, data: dict, results: dict, sweep_dirs: list[Path], cluster: str,
             minutes: float) -> dict:
    models = results.get("models", {})
    ssl = _comparisons(results["ssl"], models["ssl_dir"], ("ssl", "random")) if "ssl" in results else {}
    cont = (_comparisons(results["continual"], models["stage2_dir"], ("from_stage1", "from_scratch"))
            if "continual" in results else {})
    cur = (_comparisons(results["curated"], models["curated_dir"], ("curated", "random_subset"))
           if "curated" in results else {})
    study = {
        "seed": opts.seed, "minutes": round(minutes, 2),
        "tasks": _headline(ssl, opts.tasks, ("ssl", "random")),
        "continual": _headline(cont, opts.continual_tasks, ("from_stage1", "from_scratch")),
        "scaling": scaling_rows(sweep_dirs, opts.scaling_tasks),
        "curve": curve_rows(results.get("curve"), results.get("curve_last"), results.get("curve_models", {}),
                            opts.curve_tasks),
        "curated": _headline(cur, opts.scaling_tasks, ("curated", "random_subset")),
        "diversity": {k: list(v) for k, v in laptop().diversity.items()},
        "plan": asdict(plan), "cluster": cluster, "quick": opts.quick, "data": data,
        "recipe": str(opts.config), "overrides": list(opts.overrides),
        "eval": {"resolution": opts.resolution, "bootstrap": opts.bootstrap, "max_samples": opts.max_samples,
                 "seg_steps": opts.seg_steps, "split": opts.eval_split,
                 "ci": "95% percentile bootstrap over test images (whole patients "
                 "where the task groups them); deltas: paired, the same resamples for both models"},
        "models": models,
    }
    study["claims"] = claims(study)
    return study


def clean(obj: Any) -> Any:
    """NaN/inf -> null (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def run_summaries(run_dirs: list[Path]) -> dict[str, dict]:
    """Per run: steps done, final losses, and how often the collapse monitors would have warned."""
    from dinotrain.train.monitor import CollapseWatch

    out = {}
    for d in run_dirs:
        lines = []
        path = metrics_path(d)
        for ln in (path.read_text().splitlines() if path.exists() else []):
            try:
                lines.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
        # the trainer's own judgement (means over the last logged steps), every alerting window counted
        watch = CollapseWatch(repeat_every=1)
        warns = [w for ln in lines for w in watch.observe(ln, int(ln.get("step", 0)))]
        tail = lines[-5:]
        rec = {"steps": int(lines[-1].get("step", 0)) if lines else 0,
               "final_total_loss": sum(x.get("total_loss", math.nan) for x in tail) / len(tail) if tail else None,
               "collapse_warnings": len(warns), "first_collapse_warning": warns[0] if warns else None}
        last = lines[-1] if lines else {}
        if finite_or_none(last.get("teacher_entropy")) is not None and finite_or_none(last.get("teacher_max_entropy")):
            # 1.0 = uniform targets (the DINO terms teach nothing); the collapse indicators at the end
            rec["final_teacher_entropy_ratio"] = last["teacher_entropy"] / last["teacher_max_entropy"]
        rec["final_head_bottleneck_cos"] = finite_or_none(last.get("head_bottleneck_cos"))
        run_json = Path(d) / RUN_RECORD
        if run_json.exists():
            rec["images"] = json.loads(run_json.read_text()).get("n_images")
        out[Path(d).name] = rec
    return out


# ----------------------------------------------------------------------------- claims
def _lo(v: dict) -> float | None:
    return (v.get("delta_ci") or [None, None])[0]


def _hi(v: dict) -> float | None:
    return (v.get("delta_ci") or [None, None])[1]


def claims(study: dict) -> dict:
    """Which of the issue's claims the numbers support (computed, never asserted)."""
    tasks = study.get("tasks", {})
    image = {k: v for k, v in tasks.items() if v.get("kind") != "segmentation"}
    above = sorted(k for k, v in image.items() if (_lo(v) or -1) > 0)
    seg = {k: v for k, v in tasks.items() if v.get("kind") == "segmentation"}
    seg_higher = sorted(k for k, v in seg.items() if (v.get("delta") or 0) > 0)
    ssl = {"image_tasks_ci_above_zero": above, "n_image_tasks": len(image),
           "sex_task": any("sex" in k for k in above), "age_task": any("age" in k for k in above),
           "segmentation_higher_dice": seg_higher,
           "segmentation_ci_above_zero": sorted(k for k, v in seg.items() if (_lo(v) or -1) > 0)}
    ssl["holds"] = len(above) >= 6 and ssl["sex_task"] and ssl["age_task"] and bool(seg_higher)
    cont = study.get("continual", {})
    better = sorted(k for k, v in cont.items() if (_lo(v) or -1) > 0)
    worse = sorted(k for k, v in cont.items() if (_hi(v) if _hi(v) is not None else 1) < 0)
    continual = {"ci_above_zero": better, "ci_below_zero": worse, "n_tasks": len(cont),
                 "mean_delta": _mean([v.get("delta") for v in cont.values()]),
                 "holds": bool(better) and not worse}
    curated = study.get("curated", {})
    cur = {"ci_above_zero": sorted(k for k, v in curated.items() if (_lo(v) or -1) > 0),
           "ci_below_zero": sorted(k for k, v in curated.items() if (_hi(v) if _hi(v) is not None else 1) < 0),
           "n_tasks": len(curated)}
    cur["holds"] = bool(cur["ci_above_zero"]) and not cur["ci_below_zero"]
    curve = study.get("curve", {})
    rising = {"rising": sorted(k for k, v in curve.items() if v.get("last_step", {}).get("verdict") == "rising"),
              "flat": sorted(k for k, v in curve.items() if v.get("last_step", {}).get("verdict") == "flat"),
              "falling": sorted(k for k, v in curve.items() if v.get("last_step", {}).get("verdict") == "falling"),
              "n_tasks": len(curve)}
    return {"ssl_beats_random": ssl, "continual_beats_scratch": continual, "scaling": scaling_claim(study),
            "curated_beats_random": cur, "still_rising": rising}


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def scaling_claim(study: dict) -> dict:
    """The largest size beats the smallest on the scaling tasks (per diversity set and task)."""
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in study.get("scaling", []):
        by[(r["diversity"], r["task"])].append(r)
    pairs = []
    for (div, task), rows in sorted(by.items()):
        rows = sorted(rows, key=lambda r: r["images"])
        if len(rows) < 2:
            continue
        small, large = rows[0], rows[-1]
        sep = None not in (large["ci"][0], small["ci"][1]) and large["ci"][0] > small["ci"][1]
        worse = None not in (large["ci"][1], small["ci"][0]) and large["ci"][1] < small["ci"][0]
        pairs.append({"diversity": div, "task": task, "smallest": small["images"], "largest": large["images"],
                      "value_smallest": small["value"], "value_largest": large["value"],
                      "largest_better": large["value"] > small["value"], "cis_separate": bool(sep),
                      "largest_worse_cis_separate": bool(worse)})
    n_better = sum(p["largest_better"] for p in pairs)
    # a claim rests on intervals, not on point estimates: most pairs better, at least one with the
    # CIs apart, and none worse with the CIs apart
    return {"pairs": pairs, "n_largest_better": n_better, "n_pairs": len(pairs),
            "holds": bool(pairs) and n_better > len(pairs) / 2 and any(p["cis_separate"] for p in pairs)
            and not any(p["largest_worse_cis_separate"] for p in pairs)}


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interval(ax, pos, lo, hi, color, capsize: int, horizontal: bool = False) -> None:
    """CI bars drawn from their ends, not as offsets from the estimate: a bootstrap percentile CI need
    not contain the point estimate (skewed R², small sets), and matplotlib refuses negative offsets."""
    import numpy as np

    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    if horizontal:
        ax.errorbar(mid, pos, xerr=half, fmt="none", ecolor=color, capsize=capsize)
    else:
        ax.errorbar(pos, mid, yerr=half, fmt="none", ecolor=color, capsize=capsize)


def plot_deltas(rows: dict[str, dict], title: str, xlabel: str, path: Path) -> Path:
    """Each task's difference with its paired 95% CI as a horizontal bar; the zero line marks no effect."""
    plt = _plt()
    names = list(rows)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.6))
    for i, name in enumerate(names):
        v = rows[name]
        d, lo, hi = v.get("delta"), _lo(v), _hi(v)
        if d is None:
            continue
        color = "C2" if (lo is not None and lo > 0) else "C3" if (hi is not None and hi < 0) else "C7"
        if None not in (lo, hi):
            _interval(ax, [i], [lo], [hi], color, capsize=4, horizontal=True)
        ax.plot([d], [i], "o", color=color)
    ax.axvline(0.0, color="k", lw=1)
    ax.set_yticks(range(len(names)), [f"{n} ({rows[n]['metric'].split('/')[-1]})" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(f"{xlabel}\n(green: CI above 0, red: CI below 0, grey: CI includes 0)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scaling(rows: list[dict], path: Path, min_fit_points: int = 3) -> Path:
    """Metric vs training images per diversity set, with CIs; a power law only where `no_fit_reason`
    finds none (>= 3 sizes, positive values, the ends' CIs apart)."""
    import numpy as np

    from launch.sweeps.scaling import fit_power_law, no_fit_reason

    plt = _plt()
    tasks = sorted({r["task"] for r in rows}) or ["(none)"]
    cols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        series = sorted({r["diversity"] for r in rows if r["task"] == task})
        for i, div in enumerate(series):
            pts = sorted((r for r in rows if r["task"] == task and r["diversity"] == div), key=lambda r: r["images"])
            x = np.array([p["images"] for p in pts], float)
            y = np.array([p["value"] for p in pts], float)
            lo = np.array([p["ci"][0] if p["ci"][0] is not None else v for p, v in zip(pts, y)], float)
            hi = np.array([p["ci"][1] if p["ci"][1] is not None else v for p, v in zip(pts, y)], float)
            shift = 1 + 0.025 * (i - (len(series) - 1) / 2)  # side by side when two series coincide
            _interval(ax, x * shift, lo, hi, f"C{i}", capsize=3)
            ax.plot(x * shift, y, "o", color=f"C{i}", label=div)
            reason = no_fit_reason(list(x), list(y), list(lo), list(hi), min_fit_points)
            if reason is not None:
                ax.plot([], [], " ", label=f"{div}: no fit ({reason})")
            else:
                try:
                    fit = fit_power_law(x, y)
                    grid = np.geomspace(x.min(), x.max(), 50)
                    b = 0.0 if abs(fit.exponent) < 1e-9 else fit.exponent  # a flat fit's exponent is round-off
                    ax.plot(grid, fit.predict(grid), color=f"C{i}", alpha=0.7, label=f"{div} fit: n^{b:.2g}")
                except (ValueError, RuntimeError):
                    pass
        ax.set_xscale("log")
        sizes = sorted({r["images"] for r in rows if r["task"] == task})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_title(task, fontsize="medium")
        ax.set_xlabel("training images")
        metric = next((r["metric"] for r in rows if r["task"] == task), "")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curve(curve: dict[str, dict], path: Path) -> Path:
    """Per task: the headline metric of each checkpoint of the SSL run with its 95% CI; step 0 is the init."""
    plt = _plt()
    tasks = list(curve)
    cols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 3.2 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        v = curve[task]
        pts = v["points"]
        x = [p["step"] for p in pts]
        y = [p["value"] for p in pts]
        lo = [p["ci"][0] if p["ci"][0] is not None else p["value"] for p in pts]
        hi = [p["ci"][1] if p["ci"][1] is not None else p["value"] for p in pts]
        ax.fill_between(x, lo, hi, color="C0", alpha=0.2, lw=0)
        ax.plot(x, y, "o-", color="C0")
        last = v.get("last_step")
        if last:
            ax.set_title(f"{task}\nlast interval: {last['verdict']}", fontsize="medium")
        else:
            ax.set_title(task, fontsize="medium")
        ax.set_xlabel("training step (0 = init)")
        ax.set_ylabel(v["metric"])
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle("SSL run: probe metric per checkpoint (95% CI band)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_losses(run_dirs: dict[str, Path], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = 0
    for i, (name, d) in enumerate(sorted(run_dirs.items())):
        f = metrics_path(d)
        if not f.exists():
            continue
        pts = []
        for ln in f.read_text().splitlines():
            try:
                x = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if finite_or_none(x.get("total_loss")) is not None:
                pts.append((x.get("step", 0), x["total_loss"]))
        if pts:
            ax.plot(*zip(*pts), color=f"C{i % 10}", label=name, lw=1.2)
            drawn += 1
    ax.set_xlabel("step")
    ax.set_ylabel("total loss (DINO + iBOT + KoLeo)")
    ax.set_title("training loss of every run")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="x-small", ncol=2)
    else:  # a published copy of the study (no run folders beside it)
        ax.text(0.5, 0.5, "no run folder with metrics.jsonl beside study.json", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report and seeds
def render(out: Path, ablation: Path | None = None) -> dict[str, Path]:
    """report.md and the plots from OUT/study.json (+ OUT/seeds.json, + the recipe's ablation notes)."""
    from launch.study.study_markdown import report

    out = Path(out)
    study = json.loads((out / "study.json").read_text())
    if ablation is None:
        ablation = Path(study["recipe"]).with_suffix(".ablation.md")
    seeds_path = out / "seeds.json"
    seeds = json.loads(seeds_path.read_text()) if seeds_path.exists() else None
    # a study.json may predate a claim rule or the plan's batch: bring it up to date once, so that a
    # published copy renders the same report
    before = json.dumps(clean(study), indent=1, allow_nan=False)
    study["claims"] = claims(study)  # from the tables, by this code's rules
    batch = study["plan"].get("batch") or _run_batch(Path(study.get("models", {}).get("ssl_dir", out / "none")))
    if batch is not None:
        study["plan"]["batch"] = batch
    after = json.dumps(clean(study), indent=1, allow_nan=False)
    if after != before:
        (out / "study.json").write_text(after + "\n")
    paths = {}
    if study["tasks"]:
        paths["ssl_vs_random"] = plot_deltas(study["tasks"], "SSL − random init (paired 95% CI)",
                                             "difference in the task's metric", out / "ssl_vs_random.png")
    if study["continual"]:
        paths["continual"] = plot_deltas(study["continual"], "stage 2: from stage 1 − from scratch (paired 95% CI)",
                                         "difference in the task's metric", out / "continual.png")
    if study["scaling"]:
        paths["scaling"] = plot_scaling(study["scaling"], out / "scaling.png")
    if study.get("curve"):
        paths["curve"] = plot_curve(study["curve"], out / "curve.png")
    if study.get("curated"):
        paths["curated"] = plot_deltas(study["curated"], "curated − random subset, same size (paired 95% CI)",
                                       "difference in the task's metric", out / "curated.png")
    run_dirs = _run_dirs(out, study)
    if run_dirs or not (out / "loss_curves.png").exists():  # a published copy keeps the curves it was given
        paths["loss_curves"] = plot_losses(run_dirs, out / "loss_curves.png")
    text = ablation.read_text() if ablation is not None and ablation.is_file() else None
    paths["report"] = out / "report.md"
    paths["report"].write_text(report(study, text, seeds))
    return paths


def _run_batch(run_dir: Path) -> int | None:
    """Global batch of a finished run, from its config.yaml (studies written before the plan held it)."""
    from omegaconf import OmegaConf

    path = config_path(run_dir)
    if not path.is_file():
        return None
    from launch.study.study_runs import global_batch

    return global_batch(OmegaConf.load(path))


def _run_dirs(out: Path, study: dict) -> dict[str, Path]:
    dirs = {d.name: d for d in sorted((out / "sweep" / "runs").glob("*")) if d.is_dir()}
    dirs.update({d.name: d for d in sorted((out / "runs").glob("*")) if d.is_dir()})
    return dirs


def combine(folders: list[Path], out: Path) -> list[Path]:
    """seeds.json + seeds.md from several study folders; refreshes OUT/report.md when OUT is a study."""
    from launch.study.study_markdown import both_at_mean, seeds_table

    studies = []
    for f in folders:
        path = Path(f) / "study.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: give folders written by `dinotrain study OUT`")
        studies.append(json.loads(path.read_text()))
    seeds: dict[str, Any] = {"seeds": [s["seed"] for s in studies], "folders": [str(f) for f in folders]}
    for section in ("tasks", "continual", "curated"):
        names = list(dict.fromkeys(t for s in studies for t in s.get(section, {})))
        seeds[section] = {}
        for t in names:
            per = [s.get(section, {}).get(t) for s in studies]
            metric = next(p["metric"] for p in per if p)
            seeds[section][t] = {"metric": metric,
                                 "per_seed": [{"delta": p["delta"], "delta_ci": p["delta_ci"],
                                               **({"both_at_mean": True} if both_at_mean(p) else {})}
                                              if p else None for p in per],
                                 "all_above_zero": all(p and (_lo(p) or -1) > 0 for p in per)}
    seeds["claims"] = {name: [claims(s)[key]["holds"] for s in studies]
                       for name, key in (("SSL beats random", "ssl_beats_random"),
                                         ("continual beats scratch", "continual_beats_scratch"),
                                         ("largest size beats smallest", "scaling"),
                                         ("curated beats random subset", "curated_beats_random"))}
    seeds["still_rising"] = [claims(s)["still_rising"]["rising"] for s in studies]
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(clean(seeds), indent=1) + "\n")
    (out / "seeds.md").write_text("# Laptop study across seeds\n\n" + "\n".join(seeds_table(seeds)))
    paths = [out / "seeds.json", out / "seeds.md"]
    if (out / "study.json").is_file():
        paths.append(render(out)["report"])
    return paths
