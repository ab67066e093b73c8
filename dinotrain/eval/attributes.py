"""Clinical attributes from CLS features: ridge regression (age) beside a predict-the-mean floor.

The ridge penalty is chosen by K-fold cross-validation over train + validation (folds keep a
patient's images together when groups are given) with the one-standard-error rule: the strongest
penalty whose CV error is within one standard error of the best. On the small sets of the laptop
study a single ~50-image validation split picked weak penalties by chance (jsrt_age, R² -0.85 where
the mean predictor gives 0); the rule falls back towards the mean when nothing beats it beyond noise.
Binary attributes (sex) are classification specs scored with the linear probe (AUROC).
"""

from __future__ import annotations

import numpy as np

from dinotrain.eval.threads import one_thread

ALPHA_GRID = tuple(float(a) for a in np.logspace(-2, 6, 9))
FOLDS = 5


def _fit(x: np.ndarray, y: np.ndarray, alpha: float):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # svd: exact for the grid's weakest penalties too, where frozen features (more dimensions than
    # images) make the normal equations ill-conditioned and the default Cholesky solve warns
    return make_pipeline(StandardScaler(), Ridge(alpha=alpha, solver="svd")).fit(x, y)


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
                 grid: tuple[float, ...] = ALPHA_GRID, k: int = FOLDS) -> float:
    """The largest alpha whose K-fold CV mean squared error is within one standard error of the best."""
    folds = _folds(len(y), groups, k)
    if len(folds) < 2:
        return max(grid)
    errs = np.empty((len(grid), len(folds)))
    for j, held in enumerate(folds):
        fit = np.setdiff1d(np.arange(len(y)), held)
        for i, a in enumerate(grid):
            errs[i, j] = np.mean((_fit(x[fit], y[fit], a).predict(x[held]) - y[held]) ** 2)
    mean, se = errs.mean(1), errs.std(1, ddof=1) / np.sqrt(len(folds))
    best = int(np.argmin(mean))
    return max(a for a, m in zip(grid, mean) if m <= mean[best] + se[best])


@one_thread
def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                test_x: np.ndarray, groups: np.ndarray | None = None,
                grid: tuple[float, ...] = ALPHA_GRID) -> tuple[np.ndarray, float]:
    """Test predictions and the chosen alpha (`groups`: of train + val, in that order)."""
    x = np.concatenate([train_x, val_x]) if len(val_x) else train_x
    y = np.concatenate([train_y, val_y]) if len(val_x) else train_y
    alpha = choose_alpha(x, y, groups, grid)
    return _fit(x, y, alpha).predict(test_x), alpha


def mean_baseline(train_y: np.ndarray, val_y: np.ndarray, n_test: int) -> np.ndarray:
    """The floor every age model must beat: the training mean for everyone."""
    return np.full(n_test, float(np.mean(np.concatenate([train_y, val_y]))))
