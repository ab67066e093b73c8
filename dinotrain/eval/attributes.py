"""Clinical attributes from CLS features: ridge regression (age) beside a predict-the-mean floor.

The ridge penalty is chosen on validation MAE, then the model is refit on train + validation.
Binary attributes (sex) are classification specs scored with the linear probe (AUROC).
"""

from __future__ import annotations

import numpy as np

from dinotrain.eval.threads import one_thread

ALPHA_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def _fit(x: np.ndarray, y: np.ndarray, alpha: float):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, y)


@one_thread
def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                test_x: np.ndarray, grid: tuple[float, ...] = ALPHA_GRID) -> tuple[np.ndarray, float]:
    """Test predictions and the chosen alpha."""
    best_a, best = grid[len(grid) // 2], np.inf
    if len(val_x):
        for a in grid:
            mae = float(np.mean(np.abs(_fit(train_x, train_y, a).predict(val_x) - val_y)))
            if mae < best - 1e-12:
                best_a, best = a, mae
    x = np.concatenate([train_x, val_x]) if len(val_x) else train_x
    y = np.concatenate([train_y, val_y]) if len(val_x) else train_y
    return _fit(x, y, best_a).predict(test_x), best_a


def mean_baseline(train_y: np.ndarray, val_y: np.ndarray, n_test: int) -> np.ndarray:
    """The floor every age model must beat: the training mean for everyone."""
    return np.full(n_test, float(np.mean(np.concatenate([train_y, val_y]))))
