"""Clinical attributes from CLS features: ridge regression (age) beside a predict-the-mean floor.

The ridge penalty is chosen by K-fold cross-validation over train + validation (folds keep a
patient's images together when groups are given) with the one-standard-error rule: the strongest
penalty whose CV error is within one standard error of the best. The grid ends with an infinite
penalty, the training mean itself, so "no signal beyond noise" is a choice the rule can make. On the
small sets of the laptop study a single ~50-image validation split picked weak penalties by chance
(jsrt_age, R² -0.85 where the mean predictor gives 0).
Binary attributes (sex) are classification specs scored with the linear probe (AUROC).
"""

from __future__ import annotations

import math

import numpy as np

from dinotrain.eval.threads import one_thread

ALPHA_GRID = (*(float(a) for a in np.logspace(-2, 6, 9)), math.inf)  # inf: predict the training mean
FOLDS = 5


def ridge_path(x_fit: np.ndarray, y_fit: np.ndarray, x_pred: np.ndarray, alphas) -> np.ndarray:
    """Predictions for `x_pred` of ridge regressions on standardised features (scikit-learn's
    StandardScaler + Ridge with an intercept), one row per penalty in `alphas`.

    One SVD of the standardised training features serves every penalty:
    w = V diag(s / (s² + alpha)) Uᵀ (y - mean y); exact where the normal equations are not
    (frozen features have more dimensions than the age tasks have images), and alpha = inf gives w = 0.
    """
    x_fit, x_pred = np.asarray(x_fit, np.float64), np.asarray(x_pred, np.float64)
    y_fit = np.asarray(y_fit, np.float64)
    mu, sd = x_fit.mean(0), x_fit.std(0)
    sd[sd < 10 * np.finfo(np.float64).eps] = 1.0  # constant columns stay as they are (StandardScaler's rule)
    u, sv, vt = np.linalg.svd((x_fit - mu) / sd, full_matrices=False)
    y_mean = y_fit.mean()
    uty = u.T @ (y_fit - y_mean)
    shrink = sv[None, :] / (sv[None, :] ** 2 + np.asarray(alphas, np.float64)[:, None])
    return y_mean + (shrink * uty[None, :]) @ (((x_pred - mu) / sd) @ vt.T).T


def _folds(n: int, groups: np.ndarray | None, k: int) -> list[np.ndarray]:
    """Held-out indices of each fold: whole groups, assigned in a fixed shuffled order."""
    rng = np.random.default_rng(0)
    if groups is None:
        return [f for f in np.array_split(rng.permutation(n), k) if len(f)]
    uniq = np.unique(groups)
    order = uniq[rng.permutation(len(uniq))]
    parts = np.array_split(order, min(k, len(uniq)))
    return [np.flatnonzero(np.isin(groups, p)) for p in parts if len(p)]


def choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
                 grid: tuple[float, ...] = ALPHA_GRID, k: int = FOLDS) -> tuple[float, str]:
    """The largest alpha whose K-fold CV mean squared error is within one standard error of the
    best, and how it was chosen: "cv", or "too_few_groups" (under 2 folds: the largest alpha)."""
    folds = _folds(len(y), groups, k)
    if len(folds) < 2:
        return max(grid), "too_few_groups"
    errs = np.empty((len(grid), len(folds)))
    for j, held in enumerate(folds):
        fit = np.setdiff1d(np.arange(len(y)), held)
        errs[:, j] = np.mean((ridge_path(x[fit], y[fit], x[held], grid) - y[held][None, :]) ** 2, axis=1)
    mean, se = errs.mean(1), errs.std(1, ddof=1) / np.sqrt(len(folds))
    best = int(np.argmin(mean))
    return max(a for a, m in zip(grid, mean) if m <= mean[best] + se[best]), "cv"


@one_thread
def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                test_x: np.ndarray, groups: np.ndarray | None = None,
                grid: tuple[float, ...] = ALPHA_GRID) -> tuple[np.ndarray, dict]:
    """Test predictions and what was chosen: {"alpha" (None = inf), "mean_predictor", "chosen_by"}
    (`groups`: of train + val, in that order)."""
    x = np.concatenate([train_x, val_x]) if len(val_x) else train_x
    y = np.concatenate([train_y, val_y]) if len(val_x) else train_y
    alpha, how = choose_alpha(x, y, groups, grid)
    chosen = {"alpha": alpha if math.isfinite(alpha) else None, "mean_predictor": math.isinf(alpha), "chosen_by": how}
    return ridge_path(x, y, test_x, [alpha])[0], chosen


def mean_baseline(train_y: np.ndarray, val_y: np.ndarray, n_test: int) -> np.ndarray:
    """The floor every age model must beat: the training mean for everyone."""
    return np.full(n_test, float(np.mean(np.concatenate([train_y, val_y]))))
