"""What the demo shows: loss curves, probe results, sample images, a terminal table, one paragraph.

Pure functions of their inputs (a metrics.jsonl, a list of probe rows, arrays) so that they are
tested without running the chain. matplotlib runs with the Agg backend: no display needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ProbeRow:
    """One task's score for the pretrained (SSL) encoder and the baseline: the same run's network at
    step 0, untrained (`random`: its initial weights)."""

    task: str
    metric: str  # e.g. "auroc", "balanced_accuracy", "r2", "mae"
    ssl: float
    random: float
    ssl_ci: tuple[float, float] | None = None
    random_ci: tuple[float, float] | None = None
    higher_is_better: bool = True
    description: str = ""

    @property
    def delta(self) -> float:
        """SSL minus random, signed so that > 0 always means SSL is better."""
        d = self.ssl - self.random
        return d if self.higher_is_better else -d


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl; a truncated last line (a run still writing) is ignored."""
    rows = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # being written right now
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
    return rows


def loss_series(metrics: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (steps, values)} for every numeric key with 'loss' in its name (finite values only)."""
    series: dict[str, tuple[list, list]] = {}
    for i, row in enumerate(metrics):
        step = row.get("step", i)
        for k, v in row.items():
            if "loss" not in k or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                continue
            s = series.setdefault(k, ([], []))
            s[0].append(step)
            s[1].append(float(v))
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in sorted(series.items())}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on a headless node
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the PNG path."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_losses(metrics: Sequence[dict], out: str | Path, title: str = "pretraining losses") -> Path:
    """Loss curves (one line per loss term) against the step; returns the PNG path."""
    series = loss_series(metrics)
    if not series:
        keys = sorted({k for r in metrics for k in r})
        raise ValueError(f"plot_losses: no numeric '*loss*' key in the metrics (keys: {keys})")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, (steps, values) in series.items():
        ax.plot(steps, values, label=name, lw=2 if name in ("loss", "total_loss") else 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out, dpi=110)


# the baseline's name in the table and the plot: the network the run started from, untrained
BASELINE = "step-0 init"


def plot_probes(rows: Sequence[ProbeRow], out: str | Path,
                title: str = f"frozen features: SSL vs the run's {BASELINE}") -> Path:
    """Grouped bars (SSL, random) per task with 95% CI whiskers where known; returns the PNG path."""
    if not rows:
        raise ValueError("plot_probes: no probe results to plot")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 4.0))
    x = np.arange(len(rows))
    w = 0.38
    for offset, which, color in ((-w / 2, "ssl", "tab:blue"), (w / 2, "random", "tab:gray")):
        vals = np.array([getattr(r, which) for r in rows])
        cis = [getattr(r, f"{which}_ci") for r in rows]
        err = np.array([[v - c[0], c[1] - v] if c else [0.0, 0.0] for v, c in zip(vals, cis)]).T
        ax.bar(x + offset, vals, w, yerr=np.clip(err, 0, None), capsize=3, color=color,
               label="SSL pretrained" if which == "ssl" else f"{BASELINE} (untrained)")
    ax.set_xticks(x, [f"{r.task}\n({r.metric})" for r in rows], fontsize=8)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out, dpi=110)


def plot_images(images: Sequence[tuple[str, np.ndarray]], out: str | Path, cols: int = 6,
                title: str = "") -> Path:
    """A grid of grayscale images (any dtype; each min-max scaled for display) with titles."""
    if not images:
        raise ValueError("plot_images: no images")
    plt = _plt()
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img) in zip(axes.ravel(), images):
        a = np.asarray(img, dtype=np.float64)
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(1, 2, 0)  # CHW -> HWC
        if a.ndim == 3:
            a = a[..., 0]
        lo, hi = np.percentile(a, [0.5, 99.5])
        ax.imshow(np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, out, dpi=100)


def _score(v: float, ci: tuple[float, float] | None) -> str:
    return f"{v:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def format_table(rows: Sequence[ProbeRow], baseline: str | None = None) -> str:
    """The terminal table: task, metric, SSL, baseline, difference (> 0 = SSL better); with
    `baseline` (what the step-0 init is, in words) a last line names it."""
    header = ("task", "metric", "SSL pretrained (95% CI)", f"{BASELINE} (95% CI)", f"SSL - {BASELINE}")
    body = [
        (r.task, r.metric, _score(r.ssl, r.ssl_ci), _score(r.random, r.random_ci), f"{r.delta:+.3f}")
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*b) for b in body]
    if baseline:
        out.append(f"{BASELINE}: {baseline}")
    return "\n".join(out)


def explain(rows: Sequence[ProbeRow], steps: int, first_loss: float | None, last_loss: float | None,
            evaluated_step: int | None = None, baseline: str = "the same network at step 0, untrained") -> str:
    """One paragraph saying what the numbers mean (written from the numbers, not canned)."""
    better = [r for r in rows if r.delta > 0]
    clear = [r for r in better if r.ssl_ci and r.random_ci and r.ssl_ci[0] > r.random_ci[1]]
    parts = []
    if first_loss is not None and last_loss is not None:
        trend = "fell" if last_loss < first_loss else "did not fall"
        parts.append(f"Over {steps} steps the total pretraining loss {trend} from {first_loss:.3f} to {last_loss:.3f}"
                     + (f"; the teacher of step {evaluated_step} (the last checkpoint) was evaluated."
                        if evaluated_step is not None and evaluated_step != steps else "."))
    parts.append(
        f"On frozen features, the self-supervised encoder beat its own starting point ({baseline}) "
        f"on {len(better)} of {len(rows)} probe tasks"
        + (f" ({len(clear)} with non-overlapping 95% confidence intervals)." if rows else ".")
    )
    parts.append(
        "Each task fits a small probe (kNN / linear / ridge) on the encoder's frozen CLS features to a latent "
        "attribute the generator used (age drives bone density, sex drives the body outline, the label is a "
        "lesion), so a higher score means the pretraining put that attribute into the features without ever "
        "seeing a label. An untrained ViT is a strong baseline on such simple images (its random patch "
        "projection already passes intensity and outline through, and a linear probe on standardised features "
        "finds them), and the test splits hold only a few dozen images, so wide intervals and small or negative "
        "differences after a few minutes of CPU training are expected; longer runs (`--minutes`) train more "
        "steps on more images. The corpus is synthetic: these numbers test the machinery end to end, not "
        "clinical value."
    )
    return " ".join(parts)
