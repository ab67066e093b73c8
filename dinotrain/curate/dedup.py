"""Near-duplicates: exact search for pairs over a cosine threshold, connected groups, one kept per group.

Vectors are [n, views, dim] unit vectors; the similarity of two samples is the largest cosine over
their pairs of views (one view for a model's CLS token, three zooms for `pixels`). The search is
exact (n^2 dot products): faiss's flat inner-product range search where faiss-cpu is installed
(faster and 3-4x less memory in BENCHMARKS.md, curate_search), else a blockwise torch matmul
holding a bounded block of the similarity matrix; both give the same pairs. That fits up to a few
hundred thousand samples on one machine; beyond, see the README's plan (an IVF index, sharded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_BYTES = 256 << 20  # similarity block held at once


def view_max_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] best cosine over view pairs (a: [n, V, D], b: [m, W, D])."""
    import torch

    ta, tb = torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b))
    s = ta.reshape(-1, a.shape[-1]) @ tb.reshape(-1, b.shape[-1]).T
    return s.reshape(a.shape[0], a.shape[1], b.shape[0], b.shape[1]).amax(dim=(1, 3)).numpy()


def search_backend(name: str = "auto") -> str:
    """'faiss' when asked for or (auto) importable, else 'torch' (BENCHMARKS.md: curate_search)."""
    if name not in ("auto", "torch", "faiss"):
        raise ValueError(f"search backend '{name}': use auto, torch or faiss")
    if name == "torch":
        return name
    try:
        import faiss  # noqa: F401
    except ImportError:
        if name == "faiss":
            raise ImportError("search backend 'faiss' needs faiss-cpu: pip install faiss-cpu") from None
        return "torch"
    return "faiss"


def near_pairs(a: np.ndarray, threshold: float, b: np.ndarray | None = None,
               backend: str = "auto") -> tuple[np.ndarray, ...]:
    """(i, j, cosine) of every pair with cosine >= threshold: within `a` (i < j) or between a and b."""
    if search_backend(backend) == "faiss":
        return faiss_pairs(a, threshold, b)
    other = a if b is None else b
    per_row = max(1, other.shape[0] * a.shape[1] * other.shape[1] * 4)
    block = max(1, min(a.shape[0], BLOCK_BYTES // per_row))
    out_i, out_j, out_s = [], [], []
    for start in range(0, a.shape[0], block):
        rows = a[start:start + block]
        if b is None:  # the upper triangle only: columns from `start` on, and j > i inside the block
            s = view_max_sim(rows, a[start:])
            s[np.tril_indices(len(rows))] = -np.inf
            offset = start
        else:
            s = view_max_sim(rows, b)
            offset = 0
        i, j = np.nonzero(s >= threshold)
        out_i.append(i + start)
        out_j.append(j + offset)
        out_s.append(s[i, j])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)


def faiss_pairs(a: np.ndarray, threshold: float, b: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """`near_pairs` through faiss's exact inner-product range search over every view, then the best
    view pair per sample pair (a pair passes iff its best view pair does, so nothing is missed)."""
    import faiss

    other = a if b is None else b
    d = a.shape[-1]
    index = faiss.IndexFlatIP(d)
    index.add(np.ascontiguousarray(other.reshape(-1, d), dtype=np.float32))
    # faiss keeps sims above the radius: search a hair lower, then apply >= exactly as the torch path
    lims, sims, ids = index.range_search(np.ascontiguousarray(a.reshape(-1, d), dtype=np.float32),
                                         float(threshold) - 1e-6)
    qi = np.repeat(np.arange(len(lims) - 1) // a.shape[1], np.diff(lims).astype(np.int64))
    oj = ids // other.shape[1]
    keep = sims >= threshold
    if b is None:
        keep &= qi < oj
    qi, oj, sims = qi[keep].astype(np.int64), oj[keep].astype(np.int64), sims[keep]
    key = qi * other.shape[0] + oj
    order = np.lexsort((-sims, key))
    key, first = np.unique(key[order], return_index=True)
    return key // other.shape[0], key % other.shape[0], sims[order][first].astype(np.float32)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Label of the connected group of every node (0..n-1) of the graph with edges (i, j)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(g, directed=False)[1]


@dataclass
class Group:
    members: list[int]  # sample indices, ascending
    kept: int
    sim_to_kept: list[float]  # per member (1.0 for the kept one)
    edges: list[tuple[int, int, float]]


def duplicate_groups(vectors: np.ndarray, threshold: float, keep: str = "first", backend: str = "auto") -> list[Group]:
    """Groups of two or more near-duplicates (largest first), each with the sample it keeps.

    keep: "first" keeps the earliest sample (the order the shard sets were given, then manifest
    order); "central" keeps the member with the largest summed similarity to the others.
    """
    if keep not in ("first", "central"):
        raise ValueError(f"keep rule '{keep}': use 'first' or 'central'")
    i, j, s = near_pairs(vectors, threshold, backend=backend)
    label = components(len(vectors), i, j)
    members: dict[int, list[int]] = {}
    for idx in np.nonzero(np.bincount(label)[label] > 1)[0].tolist():
        members.setdefault(int(label[idx]), []).append(idx)
    edges: dict[int, list[tuple[int, int, float]]] = {}
    for a, b, c in zip(i.tolist(), j.tolist(), s.tolist()):
        edges.setdefault(int(label[a]), []).append((a, b, round(c, 5)))
    groups = []
    for lab, mem in members.items():
        sims = view_max_sim(vectors[mem], vectors[mem])
        kept = mem[0] if keep == "first" else mem[int(np.argmax(sims.sum(1)))]
        to_kept = sims[:, mem.index(kept)]
        groups.append(Group(mem, kept, [round(float(x), 5) for x in to_kept], edges[lab]))
    return sorted(groups, key=lambda g: (-len(g.members), g.members[0]))


def against(vectors: np.ndarray, reference: np.ndarray, threshold: float,
            backend: str = "auto") -> dict[int, tuple[int, float]]:
    """Each sample with a near-duplicate in `reference`: index -> (closest reference index, cosine)."""
    i, j, s = near_pairs(vectors, threshold, reference, backend)
    best: dict[int, tuple[int, float]] = {}
    for a, b, c in zip(i.tolist(), j.tolist(), s.tolist()):
        if a not in best or c > best[a][1]:
            best[a] = (b, c)
    return best
