"""Hierarchical k-means and top-down balanced sampling (Vo et al. 2024, facebookresearch/ssl-data-curation).

Level 1 clusters the samples; level l+1 clusters the centroids of level l, so the tree's top has
few large, coarse clusters and its leaves many fine ones. Sampling walks down from the top: a
cluster's quota is shared equally among its children, a child smaller than its share is taken
whole and what it could not use goes to the others ("water filling"), down to the leaves, where
`random` or `closest` (to the leaf centroid) picks the samples. Dense regions (many near-identical
images) thereby give up samples to rare ones. Everything is a pure function of the inputs and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def kmeans_pp(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means++ initial centres [k, d]: each next one drawn with probability proportional to d^2."""
    import torch

    n = x.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    sq = (t * t).sum(1)
    first = int(torch.randint(n, (1,), generator=g))
    centres = [first]
    d2 = (sq - 2 * t @ t[first] + sq[first]).clamp_min(0)
    for _ in range(1, k):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        nxt = int(torch.multinomial(p, 1, generator=g))
        centres.append(nxt)
        d2 = torch.minimum(d2, (sq - 2 * t @ t[nxt] + sq[nxt]).clamp_min(0))
    return np.ascontiguousarray(x[centres], dtype=np.float32)


def _lloyd_torch(x: np.ndarray, c: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    t, c = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(c)
    sq, k = (t * t).sum(1), c.shape[0]
    assign = torch.full((t.shape[0],), -1, dtype=torch.long)
    for _ in range(iters):
        new = (sq[:, None] - 2 * t @ c.T + (c * c).sum(1)[None, :]).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, t)
        c = torch.where(counts[:, None] == 0, c, sums / counts.clamp_min(1)[:, None])  # an empty one stays put
    return c.numpy(), assign.numpy()


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k, d], assignment [n]): k-means++ initialisation, then Lloyd iterations (L2) in faiss
    where faiss-cpu is installed (3.7-6.7x faster at 100k vectors, BENCHMARKS.md), else in torch."""
    k = max(1, min(int(k), x.shape[0]))
    c0 = kmeans_pp(x, k, seed)
    try:
        import faiss
    except ImportError:
        return _lloyd_torch(x, c0, iters)
    xf = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(xf.shape[1], k, niter=iters, seed=int(seed), max_points_per_centroid=10**9,
                      min_points_per_centroid=1)
    km.train(xf, init_centroids=c0)
    return km.centroids.copy(), km.index.search(xf, 1)[1][:, 0].astype(np.int64)


@dataclass
class Hierarchy:
    """assign[0]: leaf cluster of each sample; assign[l]: parent (level l+1 cluster) of each level-l cluster."""

    assign: list[np.ndarray]
    centroids: list[np.ndarray]

    def sample_clusters(self, level: int) -> np.ndarray:
        """The level-`level` cluster (0 = leaves) of every sample."""
        lab = self.assign[0]
        for parent in self.assign[1:level + 1]:
            lab = parent[lab]
        return lab


def hierarchical_kmeans(x: np.ndarray, ks: list[int], iters: int = 20, seed: int = 0) -> Hierarchy:
    """Levels of k-means, `ks` from the leaves up (e.g. [500, 50, 10]); each must be <= the level below."""
    assign, cents = [], []
    points = x
    for level, k in enumerate(ks):
        c, a = kmeans(points, k, iters, seed + level)
        assign.append(a)
        cents.append(c)
        points = c
    return Hierarchy(assign, cents)


def share(sizes: list[int], quota: int, order: np.ndarray) -> list[int]:
    """Split `quota` over children of the given sizes: equal shares, a small child taken whole and its
    unused share passed on; the last units go to the children first in `order` (seeded)."""
    take = [0] * len(sizes)
    left = min(int(quota), int(sum(sizes)))
    open_ = [c for c in order.tolist() if sizes[c] > 0]
    while left > 0 and open_:
        each = left // len(open_)
        if each == 0:
            for c in open_[:left]:
                take[c] += 1
            break
        for c in open_:
            t = min(sizes[c] - take[c], each)
            take[c] += t
            left -= t
        open_ = [c for c in open_ if take[c] < sizes[c]]
    return take


def _pick(members: np.ndarray, n: int, strategy: str, x: np.ndarray, centre: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    if n >= len(members):
        return members
    if strategy == "closest":
        d = ((x[members] - centre) ** 2).sum(1)
        return members[np.argsort(d, kind="stable")[:n]]
    return np.sort(rng.choice(members, n, replace=False))


def balanced_sample(x: np.ndarray, h: Hierarchy, target: int, strategy: str = "random", seed: int = 0) -> np.ndarray:
    """Indices (ascending) of `target` samples drawn top-down through the hierarchy (module docstring)."""
    if strategy not in ("random", "closest"):
        raise ValueError(f"strategy '{strategy}': use 'random' or 'closest'")
    rng = np.random.default_rng([int(seed), 17])
    depth = len(h.assign)
    # children of each cluster per level, and the samples under each leaf
    leaves = [np.nonzero(h.assign[0] == c)[0] for c in range(len(h.centroids[0]))]
    sizes = [np.array([len(m) for m in leaves])]
    for level in range(1, depth):
        sizes.append(np.bincount(h.assign[level], weights=sizes[level - 1],
                                 minlength=len(h.centroids[level])).astype(np.int64))
    quota = {depth - 1: share(sizes[-1].tolist(), target, rng.permutation(len(sizes[-1])))}
    for level in range(depth - 1, 0, -1):
        below = np.zeros(len(sizes[level - 1]), dtype=np.int64)
        for c, q in enumerate(quota[level]):
            kids = np.nonzero(h.assign[level] == c)[0]
            got = share(sizes[level - 1][kids].tolist(), q, rng.permutation(len(kids)))
            below[kids] = got
        quota[level - 1] = below.tolist()
    picked = [_pick(leaves[c], q, strategy, x, h.centroids[0][c], rng) for c, q in enumerate(quota[0]) if q > 0]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def occupancy_entropy(labels: np.ndarray, k: int) -> float:
    """Entropy of cluster occupancy divided by log(k): 1.0 = every cluster equally filled."""
    if k <= 1 or len(labels) == 0:
        return 0.0
    p = np.bincount(labels, minlength=k) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(k))
