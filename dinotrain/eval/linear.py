"""Linear probe: logistic regression on standardised frozen features.

The inverse regularisation C is chosen on the validation split (macro AUROC), then the probe is
refit on train + validation with that C and scored on test. Multi-label targets get one binary
probe per label (one-vs-rest).
"""

from __future__ import annotations

import warnings

import numpy as np

from dinotrain.eval.metrics import accuracy, auroc
from dinotrain.eval.threads import one_thread

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _fit(x: np.ndarray, Y: np.ndarray, C: float, multilabel: bool):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lr = LogisticRegression(C=C, max_iter=2000)
    clf = make_pipeline(StandardScaler(), OneVsRestClassifier(lr) if multilabel else lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tiny C on tiny sets: harmless
        clf.fit(x, Y if multilabel else Y.argmax(1))
    return clf


def _scores(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    p = clf.predict_proba(x)
    classes = clf.classes_ if hasattr(clf, "classes_") else np.arange(p.shape[1])
    out = np.zeros((len(x), n_classes), dtype=np.float32)
    out[:, np.asarray(classes, dtype=int)] = p  # a class missing from train gets score 0
    return out


@one_thread
def linear_probe(train_x: np.ndarray, train_Y: np.ndarray, val_x: np.ndarray, val_Y: np.ndarray,
                 test_x: np.ndarray, multilabel: bool = False,
                 grid: tuple[float, ...] = C_GRID) -> tuple[np.ndarray, float]:
    """Test scores [M, C] and the chosen C."""
    n_classes = train_Y.shape[1]
    best_c, best = grid[len(grid) // 2], -np.inf
    if len(val_x):
        for C in grid:
            s = _scores(_fit(train_x, train_Y, C, multilabel), val_x, n_classes)
            v = auroc(val_Y, s)
            if not np.isfinite(v):
                v = accuracy(val_Y, s, multilabel)
            if v > best + 1e-9:  # ties keep the stronger regularisation (smaller C, earlier)
                best_c, best = C, v
    x = np.concatenate([train_x, val_x]) if len(val_x) else train_x
    Y = np.concatenate([train_Y, val_Y]) if len(val_x) else train_Y
    return _scores(_fit(x, Y, best_c, multilabel), test_x, n_classes), best_c
