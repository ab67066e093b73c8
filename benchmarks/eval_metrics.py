"""Bootstrap CIs of the eval's classification and regression metrics: ours (numpy) vs scikit-learn's.

`python -m benchmarks.eval_metrics [--quick]`. Every task of `dinotrain eval` scores each probe
with a percentile bootstrap (1,000 resamples by default, paired across models in the study), so
the metric functions run thousands of times per task. Baseline: the same bootstrap over
scikit-learn's roc_auc_score / average_precision_score (macro over the classes present) and
r2_score / mean_absolute_error, as the eval called them before; candidate: dinotrain's numpy
implementations of the same definitions (tests/test_eval_probes.py checks they agree to 1e-12).
Shapes of a laptop-study task: a 7-class task (ham10000) with 150 test images, and a binary one
(jsrt_sex) with 49; a regression (age) with 120.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import cli, ratio_row, result, timeit


def _sklearn_macro(fn, Y: np.ndarray, S: np.ndarray) -> float:
    pos = Y.sum(0)
    cols = np.flatnonzero((pos > 0) & (pos < len(Y)))
    return float(fn(Y[:, cols], S[:, cols], average="macro")) if len(cols) else float("nan")


def _sklearn_classification(Y: np.ndarray, S: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if Y.shape[1] == 2:
        Y, S = Y[:, 1:], S[:, 1:]
    return {"auroc": lambda i: _sklearn_macro(roc_auc_score, Y[i], S[i]),
            "auprc": lambda i: _sklearn_macro(average_precision_score, Y[i], S[i])}


def _sklearn_regression(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import mean_absolute_error, r2_score

    return {"mae": lambda i: float(mean_absolute_error(y[i], p[i])), "r2": lambda i: float(r2_score(y[i], p[i]))}


def _bootstrap_all(fns: dict, n: int, n_boot: int):
    from dinotrain.eval.metrics import bootstrap_ci

    def run():
        return [bootstrap_ci(f, n, n_boot, seed=0) for f in fns.values()]

    return run


def run(quick: bool = False) -> dict:
    from dinotrain.eval import metrics

    n_boot = 50 if quick else 1000
    repeat = 2 if quick else 3
    rng = np.random.default_rng(0)
    rows = []
    for case, n, k in (("7 classes (ham10000-like)", 150, 7), ("binary (jsrt_sex-like)", 49, 2)):
        Y = metrics.one_hot(rng.integers(0, k, n), k)
        S = (Y * 0.5 + rng.random((n, k))).astype(np.float32)
        ours = {k2: v for k2, v in metrics.classification_metrics(Y, S, multilabel=False).items() if k2 != "accuracy"}
        base = _bootstrap_all(_sklearn_classification(Y, S), n, n_boot)
        cand = _bootstrap_all(ours, n, n_boot)
        assert np.allclose(base(), cand(), atol=1e-9), "numpy metrics disagree with scikit-learn"
        rows.append(ratio_row(f"AUROC + AUPRC CIs, {case}, {n} test images, {n_boot} resamples",
                              timeit(base, repeat=repeat), timeit(cand, repeat=repeat),
                              baseline_name="scikit-learn", candidate_name="dinotrain numpy"))
    y = rng.normal(55, 15, 120)
    p = y * 0.3 + rng.normal(38, 10, 120)
    base = _bootstrap_all(_sklearn_regression(y, p), 120, n_boot)
    cand = _bootstrap_all(metrics.regression_metrics(y, p), 120, n_boot)
    assert np.allclose(base(), cand(), atol=1e-9), "numpy metrics disagree with scikit-learn"
    rows.append(ratio_row(f"R² + MAE CIs, 120 test images, {n_boot} resamples", timeit(base, repeat=repeat),
                          timeit(cand, repeat=repeat), baseline_name="scikit-learn", candidate_name="dinotrain numpy"))
    return result(
        "eval_metrics",
        "bootstrap CIs of the eval metrics: numpy vs scikit-learn (same values)",
        rows,
        notes="ratio = scikit-learn seconds / numpy seconds (> 1: ours is faster); both give the same CIs "
              "(checked in the run). The bootstrap dominated `dinotrain eval` from cached features.",
        params={"resamples": n_boot, "repeat": repeat},
    )


if __name__ == "__main__":
    cli(run)
