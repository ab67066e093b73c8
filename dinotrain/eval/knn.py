"""Weighted k-nearest-neighbour classifier on cosine similarity (DINO's kNN protocol).

Each of the k nearest training samples votes for its label(s) with weight exp(sim / T); the
votes, normalised to sum to one, are the class scores. Multi-label targets vote per label, so a
label's score is the weighted fraction of neighbours that carry it.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def knn_scores(train_x: np.ndarray, train_Y: np.ndarray, test_x: np.ndarray, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
    """Class scores [M, C] for `test_x` [M, D] from `train_x` [N, D] with one-/multi-hot `train_Y` [N, C]."""
    k = min(k, len(train_x))
    a, b = l2_normalize(train_x.astype(np.float32)), l2_normalize(test_x.astype(np.float32))
    Y = train_Y.astype(np.float32)
    out = np.empty((len(b), Y.shape[1]), dtype=np.float32)
    for s in range(0, len(b), chunk):
        sim = b[s:s + chunk] @ a.T
        nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sim, nb, axis=1)
        # subtract the row max before exp: same weights, no overflow at small temperatures
        w = np.exp((top - top.max(1, keepdims=True)) / temperature)
        votes = np.einsum("mk,mkc->mc", w, Y[nb])
        out[s:s + chunk] = votes / w.sum(1, keepdims=True)
    return out
