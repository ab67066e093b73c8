"""Classification and regression metrics, and percentile bootstrap confidence intervals.

Multi-class and multi-label AUROC/AUPRC are macro averages over the classes that have both
positives and negatives in the evaluated set (a class absent from a small test split would
otherwise make the whole metric undefined); binary tasks score the positive class only.

The metrics are scikit-learn's definitions (roc_auc_score, average_precision_score, r2_score,
mean_absolute_error), computed in numpy: the bootstrap calls them thousands of times per task,
and scikit-learn's input validation alone made that 90% of an evaluation's time. The tests
check them against scikit-learn, ties included.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def binary_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve = the Mann-Whitney U statistic over P x N (ties count half)."""
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    return float((_midranks(s)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Sum over the distinct score thresholds (high to low) of recall gained x precision there."""
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order] > 0.5, s[order]
    last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]  # last item of each tie block
    tp = np.cumsum(ys)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / tp[-1]
    return float(np.sum(recall_gain * precision))


def _macro(fn, Y: np.ndarray, S: np.ndarray) -> float:
    pos = Y.sum(0)
    cols = np.flatnonzero((pos > 0) & (pos < len(Y)))
    if not len(cols) or not np.all(np.isfinite(S[:, cols])):  # a broken probe must not rank its NaNs
        return float("nan")
    return float(np.mean([fn(Y[:, c], S[:, c]) for c in cols]))


def _binary(Y: np.ndarray) -> bool:
    """A single-label two-class task: scored on its positive class (column 1) alone."""
    return Y.shape[1] == 2 and bool(np.all(Y.sum(1) == 1))


def _positive_column(Y: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (Y[:, 1:], S[:, 1:]) if _binary(Y) else (Y, S)


def auroc(Y: np.ndarray, S: np.ndarray) -> float:
    """Binary (2 columns: score of class 1) or macro one-vs-rest AUROC; Y is one-/multi-hot."""
    return _macro(binary_auroc, *_positive_column(Y, S))


def auprc(Y: np.ndarray, S: np.ndarray) -> float:
    """Average precision (scikit-learn's, no interpolation), binary or macro like `auroc`."""
    return _macro(binary_average_precision, *_positive_column(Y, S))


def accuracy(Y: np.ndarray, S: np.ndarray, multilabel: bool = False) -> float:
    """Top-1 accuracy; for multi-label, the mean per-label accuracy at threshold 0.5."""
    if multilabel:
        return float(np.mean((S >= 0.5) == (Y > 0.5)))
    return float(np.mean(S.argmax(1) == Y.argmax(1)))


def classification_metrics(Y: np.ndarray, S: np.ndarray, multilabel: bool) -> dict[str, Callable]:
    """name -> fn(idx) for the evaluated rows `idx` (so the bootstrap can resample them)."""
    return {
        "auroc": lambda i: auroc(Y[i], S[i]),
        "auprc": lambda i: auprc(Y[i], S[i]),
        "accuracy": lambda i: accuracy(Y[i], S[i], multilabel),
    }


def chance_levels(Y: np.ndarray, multilabel: bool) -> dict[str, float]:
    """What scores carry no information about the images, per metric, on the evaluated rows `Y`:
    AUROC 0.5; AUPRC the prevalence (macro over the classes `auprc` averages); accuracy that of
    always answering the most frequent class (per label for multi-label)."""
    pos = Y.mean(0)
    if _binary(Y):
        prevalence = pos[1:]
    else:
        counts = Y.sum(0)
        prevalence = pos[(counts > 0) & (counts < len(Y))]
    acc = float(np.mean(np.maximum(pos, 1 - pos))) if multilabel else float(pos.max())
    return {"auroc": 0.5, "auprc": float(prevalence.mean()) if len(prevalence) else float("nan"), "accuracy": acc}


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination; undefined (nan) when y does not vary."""
    if np.ptp(y) == 0:  # not a sum-of-squares test: the mean of a constant 0.1 is not exactly 0.1
        return float("nan")
    return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Callable]:
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return {
        "mae": lambda i: float(np.mean(np.abs(y[i] - pred[i]))),
        "r2": lambda i: r2(y[i], pred[i]),
    }


def bootstrap_ci(fn: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int = 0,
                 groups: np.ndarray | None = None, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of fn over `n` items resampled with replacement (whole groups when given:
    images of one patient are not independent)."""
    if n_boot <= 0 or n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is not None:
        uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    vals = []
    for _ in range(n_boot):
        if groups is None:
            idx = rng.integers(0, n, n)
        else:
            pick = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[g] for g in pick])
        with np.errstate(all="ignore"):
            v = fn(idx)
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < max(10, n_boot // 10):  # mostly undefined resamples: no honest interval
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
