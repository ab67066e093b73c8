"""Library choice for `dinotrain curate`: faiss-cpu vs plain torch for near-duplicate search and k-means.

`python -m benchmarks.curate_search [--quick]`. Vectors are "real-like": unit vectors drawn around
n/20 cluster centres (cosine ~0.8 within a cluster), with 1 % planted near-duplicates (cosine
> 0.99 to another vector); the 10k cases also run on uniform random vectors. Each case runs in a
fresh subprocess so its peak resident memory (ru_maxrss) is its own.

- search: every pair with cosine >= 0.98 (the dedup query). Baseline: the torch path of
  `dinotrain.curate.dedup.near_pairs` (blockwise matmul, exact). Candidate: faiss `IndexFlatIP.range_search` (exact).
- k-means: k = 100 centroids, 10 Lloyd iterations. Baseline: the torch path of
  `dinotrain.curate.kmeans` (k-means++ init + Lloyd). Candidate: `faiss.Kmeans` (its own random
  init, same iterations); `dinotrain curate` now runs k-means++ then faiss's Lloyd.
Ratios > 1: faiss faster (time) or smaller (memory). 1M vectors are left out on this 2-core shared
machine: exact all-pairs search is n^2 (100x the 100k case, hours there), see the notes.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import Skip, cli, ratio_row, result

THRESHOLD = 0.98
KMEANS_K = 100


def vectors(n: int, d: int, kind: str, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.normal(size=(n, d)).astype(np.float32)
    else:
        centres = rng.normal(size=(max(1, n // 20), d)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        x = centres[rng.integers(0, len(centres), n)] + 0.6 / np.sqrt(d) * rng.normal(size=(n, d)).astype(np.float32)
        dup = rng.choice(n, n // 100, replace=False)
        x[dup] = x[(dup + 1) % n] + 0.05 / np.sqrt(d) * rng.normal(size=(len(dup), d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _case(op: str, lib: str, n: int, d: int, kind: str) -> dict:
    """Run one case in this process: {"seconds", "found"}."""
    import time

    import torch

    torch.set_num_threads(2)
    x = vectors(n, d, kind)
    t0 = time.perf_counter()
    if op == "search" and lib == "torch":
        from dinotrain.curate.dedup import near_pairs

        found = len(near_pairs(x[:, None, :], THRESHOLD, backend="torch")[0])
    elif op == "search":
        import faiss

        faiss.omp_set_num_threads(2)
        index = faiss.IndexFlatIP(d)
        index.add(x)
        lims, dist, _ = index.range_search(x, THRESHOLD)
        found = int((len(dist) - n) // 2)  # each pair twice, and every vector with itself
    elif lib == "torch":
        from dinotrain.curate.kmeans import _lloyd_torch, kmeans_pp

        found = len(set(_lloyd_torch(x, kmeans_pp(x, KMEANS_K), 10)[1].tolist()))
    else:
        import faiss

        faiss.omp_set_num_threads(2)
        km = faiss.Kmeans(d, KMEANS_K, niter=10, seed=0, max_points_per_centroid=10**9)
        km.train(x)
        found = len(set(km.index.search(x, 1)[1][:, 0].tolist()))
    return {"seconds": time.perf_counter() - t0, "found": found}


def measure(op: str, lib: str, n: int, d: int, kind: str) -> dict:
    """One case in a fresh interpreter: seconds, result size and peak RSS (MB)."""
    code = ("import json, resource, sys; from benchmarks.curate_search import _case; "
            f"r = _case({op!r}, {lib!r}, {n}, {d}, {kind!r}); "
            "r['rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {op} {lib} n={n} d={d} {kind}: {res}", file=sys.stderr, flush=True)  # progress of a long run
    return res


def run(quick: bool = False) -> dict:
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise Skip("needs faiss-cpu (pip install faiss-cpu) for the candidate") from None
    if quick:
        cases = [("search", 2000, 384, "real-like"), ("kmeans", 2000, 384, "real-like")]
    else:
        cases = [("search", 10_000, 384, "random"), ("search", 10_000, 384, "real-like"),
                 ("search", 10_000, 768, "real-like"), ("search", 100_000, 384, "real-like"),
                 ("kmeans", 10_000, 384, "real-like"), ("kmeans", 100_000, 384, "real-like"),
                 ("kmeans", 100_000, 768, "real-like")]
        # k = n/100 at 100k (1000 centroids) ran over 10 min per library on the shared machine: k is 100
    rows = []
    for op, n, d, kind in cases:
        base, cand = measure(op, "torch", n, d, kind), measure(op, "faiss", n, d, kind)
        what = f"pairs >= {THRESHOLD}" if op == "search" else "non-empty clusters"
        label = f"{op} {n // 1000}k x {d} {kind}"
        rows.append(ratio_row(f"{label}: time", base["seconds"], cand["seconds"], baseline_name="torch",
                              candidate_name="faiss-cpu", **{f"{what} torch/faiss": f"{base['found']}/{cand['found']}"}))
        rows.append(ratio_row(f"{label}: peak RSS", base["rss_mb"], cand["rss_mb"], baseline_name="torch",
                              candidate_name="faiss-cpu", unit="MB"))
    return result("curate_search", "near-duplicate search and k-means: faiss-cpu vs torch (2 threads each)", rows,
                  notes="1M vectors not run on this 2-core machine: exact search scales as n^2 (about 100x the "
                        "100k case); at that scale use an IVF index or the sharded plan in the README.",
                  params={"threshold": THRESHOLD, "threads": 2, "kmeans_k": KMEANS_K, "kmeans_iters": 10})


if __name__ == "__main__":
    cli(run)
