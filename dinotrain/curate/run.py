"""`dinotrain curate`: embed, drop test-set near-duplicates, deduplicate, balance, write the selection.

Order of the drops (each sample gets the first reason that applies):
1. `against`: a near-duplicate of a reference image (an eval task's test split, or another shard
   set), and every member of a duplicate group that holds such a sample (near-duplicate chains
   reach the test image through it);
2. `duplicate`: a member of a near-duplicate group other than the one kept;
3. `balance`: not drawn by hierarchical k-means balanced sampling (only with a target size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dinotrain.curate.dedup import Group, against, duplicate_groups, search_backend
from dinotrain.curate.embed import Embedded, embed_set, make_encoder
from dinotrain.errors import UserError

# calibrated on real images (README "Curation"); model encoders have no calibrated default
DEFAULT_THRESHOLD = {"pixels": 0.98}


class CurateError(UserError, ValueError):
    """A curate argument the user can fix: the message names it and the fix."""


@dataclass
class CurateOptions:
    shards: list[str]
    out: str
    encoder: str = "pixels"
    resolution: int = 224
    cache: str | None = None
    threshold: float | None = None
    keep: str = "first"
    against: list[str] = field(default_factory=list)
    data: str | None = None
    target: int | None = None
    levels: list[int] = field(default_factory=lambda: [100, 10])
    strategy: str = "random"
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    sheet_rows: int = 12
    part: tuple[int, int] | None = None  # (i, n): embed only shards k with k % n == i, over all SHARDS
    embed_only: bool = False
    search: str = "auto"  # exact pair search: faiss where installed, else torch


@dataclass
class Pool:
    sets: list[Embedded]
    set_of: np.ndarray  # per sample: index into sets
    vectors: np.ndarray

    @classmethod
    def of(cls, sets: list[Embedded]) -> Pool:
        set_of = np.concatenate([np.full(len(e.keys), i) for i, e in enumerate(sets)])
        return cls(sets, set_of, np.concatenate([e.vectors for e in sets]))

    def local(self, i: int) -> tuple[Embedded, int]:
        s = int(self.set_of[i])
        return self.sets[s], i - int(np.searchsorted(self.set_of, s))

    def name(self, i: int) -> str:
        e, j = self.local(i)
        return f"{e.name}:{e.keys[j]}"

    def where(self, i: int) -> tuple[str, str, str]:
        e, j = self.local(i)
        return e.root, e.shard[j], e.keys[j]


def threshold_of(opts: CurateOptions) -> float:
    if opts.threshold is not None:
        if not 0 < opts.threshold <= 1:
            raise CurateError(f"--threshold {opts.threshold}: give a cosine in (0, 1]")
        return float(opts.threshold)
    if opts.encoder in DEFAULT_THRESHOLD:
        return DEFAULT_THRESHOLD[opts.encoder]
    raise CurateError(f"--encoder {opts.encoder}: give --threshold (a cosine; only 'pixels' has a calibrated "
                      "default, see the README's Curation section for how to calibrate one)")


def cache_for(root: str, opts: CurateOptions) -> str:
    """Beside the shards (`ROOT/curate`), or --cache for shards one cannot write beside (s3://, read-only)."""
    if opts.cache:
        return opts.cache
    if "://" in root and not root.startswith("file://"):
        raise CurateError(f"shards {root} are remote: give --cache FOLDER for the embeddings")
    here = Path(root) / "curate"
    try:
        here.mkdir(exist_ok=True)
    except OSError as e:
        raise CurateError(f"cannot write embeddings beside {root} ({e.strerror}): give --cache FOLDER") from None
    return str(here)


def reference_vectors(ref: str, encoder, opts: CurateOptions, log) -> tuple[np.ndarray, list[str]]:
    """(vectors, names) of an --against reference: a shard folder, else an eval task's test split."""
    if Path(ref).expanduser().is_dir() or "://" in ref:
        e = embed_set(ref, encoder, cache_for(ref, opts), log)
        return e.vectors, [f"{e.name}:{k} ({s})" for k, s in zip(e.keys, e.sources)]
    from dinotrain.eval.specs import SpecError, load_spec, load_task

    try:
        spec = load_spec(ref)
    except SpecError as e:
        raise CurateError(f"--against {ref}: neither a shard folder nor an eval task ({e})") from None
    root = opts.data
    if not root:
        raise CurateError(f"--against {ref}: give --data (or set DINOTRAIN_TEST_DATA), the folder of {spec.dataset}/")
    task = load_task(spec, root)
    test = task.indices("test")
    images = [task.images[i] for i in test]
    log(f"embedding the {len(images)} test images of task {spec.name}")
    return encoder.embed(images).astype(np.float32), [f"{spec.name}:test:{task.images[i]}" for i in test]


def drop_against(pool: Pool, refs: list[str], encoder, opts: CurateOptions, thr: float,
                 log) -> tuple[dict[int, str], dict[str, int]]:
    """(drops, pool samples near-duplicating each reference)."""
    drops: dict[int, str] = {}
    counts: dict[str, int] = {}
    for ref in refs:
        vec, names = reference_vectors(ref, encoder, opts, log)
        hits = against(pool.vectors, vec, thr, opts.search)
        counts[ref] = len(hits)
        for i, (j, c) in hits.items():
            drops.setdefault(i, f"against: near-duplicate of {names[j]} (cos {c:.4f})")
    return drops, counts


def drop_duplicates(pool: Pool, groups: list[Group], drops: dict[int, str]) -> None:
    for g in groups:
        tainted = next((m for m in g.members if m in drops and drops[m].startswith("against")), None)
        for m, sim in zip(g.members, g.sim_to_kept):
            if tainted is not None and m not in drops:
                drops[m] = f"against: in duplicate group of {pool.name(tainted)}, a test near-duplicate"
            elif m != g.kept and m not in drops:
                drops[m] = f"duplicate: of {pool.name(g.kept)} (cos {sim:.4f})"


def balance(pool: Pool, drops: dict[int, str], opts: CurateOptions) -> dict:
    """Hierarchical k-means over the survivors, balanced sampling to --target; returns the cluster report."""
    from dinotrain.curate.kmeans import balanced_sample, hierarchical_kmeans, occupancy_entropy

    alive = np.array([i for i in range(len(pool.vectors)) if i not in drops], dtype=np.int64)
    if not len(alive):
        raise CurateError("--target: no sample is left to sample from after the drops; check --threshold and --against")
    ks = [min(k, len(alive)) for k in opts.levels]
    if any(b > a for a, b in zip(ks, ks[1:])):
        raise CurateError(f"--levels {opts.levels}: give cluster counts from the leaves up, each <= the one before")
    x = pool.vectors[alive, 0]  # the first view (a model's CLS; pixels: the widest zoom)
    h = hierarchical_kmeans(x, ks, seed=opts.seed)
    chosen = balanced_sample(x, h, int(opts.target), opts.strategy, opts.seed)
    chosen_set = set(chosen.tolist())
    leaf = h.sample_clusters(0)
    for pos, i in enumerate(alive.tolist()):
        if pos not in chosen_set:
            drops[i] = f"balance: not drawn from leaf cluster {int(leaf[pos])} ({opts.strategy})"
    levels = []
    for level, k in enumerate(ks):
        lab = h.sample_clusters(level)
        before, after = np.bincount(lab, minlength=k), np.bincount(lab[chosen], minlength=k)
        levels.append({"clusters": k, "entropy_before": round(occupancy_entropy(lab, k), 4),
                       "entropy_after": round(occupancy_entropy(lab[chosen], k), 4),
                       "sizes_before": _dist(before), "sizes_after": _dist(after),
                       "counts": [[int(b), int(a)] for b, a in zip(before, after)] if level == len(ks) - 1 else None})
    top = h.sample_clusters(len(ks) - 1)
    return {"levels": levels, "strategy": opts.strategy, "target": int(opts.target), "drawn": len(chosen),
            "top_members": {int(c): [int(alive[p]) for p in np.nonzero(top == c)[0]] for c in range(ks[-1])},
            "drawn_index": [int(alive[p]) for p in chosen]}


def _dist(sizes: np.ndarray) -> dict:
    s = np.sort(sizes)
    return {"min": int(s[0]), "median": float(np.median(s)), "max": int(s[-1]), "empty": int((s == 0).sum()),
            "p90": float(np.percentile(s, 90))}


def selection_doc(pool: Pool, drops: dict[int, str], command: str) -> dict:
    from dinotrain.data.selection import FORMAT, manifest_sha256

    sets = []
    for s, e in enumerate(pool.sets):
        shards: dict[str, dict] = {}
        start = int(np.searchsorted(pool.set_of, s))
        for j, (shard, key) in enumerate(zip(e.shard, e.keys)):
            part = shards.setdefault(shard, {"keep": [], "drop": {}})
            reason = drops.get(start + j)
            if reason is None:
                part["keep"].append(key)
            else:
                part["drop"][key] = reason
        kept = sum(len(p["keep"]) for p in shards.values())
        sets.append({"path": e.root, "name": e.name, "manifest_sha256": manifest_sha256(e.root),
                     "samples": len(e.keys), "kept": kept, "shards": shards})
    return {"format": FORMAT, "command": command, "sets": sets}


def embed_part(opts: CurateOptions, log=print) -> list[str]:
    """One task of a multi-process embedding (`--embed-only --part I/N`, e.g. a SLURM array element):
    the shards k (counted over all SHARDS in order) with k % N == I; returns the cache files it wrote."""
    from dinotrain.curate.embed import embed_shard, shards_of

    i, n = opts.part or (0, 1)
    if not 0 <= i < n:
        raise CurateError(f"--part {i}/{n}: give I/N with 0 <= I < N (e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    encoder = make_encoder(opts.encoder, opts.resolution, opts.threads, opts.device)
    todo = [(root, shard) for root in opts.shards for shard in shards_of(root)[1]]
    written = []
    for root, shard in todo[i::n]:
        path, done = embed_shard(shard, encoder, cache_for(root, opts))
        if done is not None:
            written.append(path)
            log(f"embedded {shard.url} ({len(done[0])} samples) -> {path}")
    log(f"part {i}/{n}: {len(todo[i::n])} of {len(todo)} shards, {len(written)} embedded now")
    return written


def run(opts: CurateOptions, command: str = "dinotrain curate", log=print) -> dict:
    """Embed, drop, select; write selection.json, groups.jsonl, report.json/.md and contact sheets to opts.out."""
    import time

    from dinotrain.curate.report import write_report

    if not opts.shards:
        raise CurateError("give one or more shard folders (outputs of `dinotrain shards build`)")
    thr = threshold_of(opts)
    t0 = time.perf_counter()
    encoder = make_encoder(opts.encoder, opts.resolution, opts.threads, opts.device)
    pool = Pool.of([embed_set(root, encoder, cache_for(root, opts), log) for root in opts.shards])
    t_embed = time.perf_counter() - t0
    drops, against_counts = drop_against(pool, opts.against, encoder, opts, thr, log)
    groups = duplicate_groups(pool.vectors, thr, opts.keep, opts.search)
    drop_duplicates(pool, groups, drops)
    clusters = balance(pool, drops, opts) if opts.target else None
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(selection_doc(pool, drops, command)) + "\n")
    meta = {"encoder": encoder.id, "threshold": thr, "keep": opts.keep, "against": against_counts,
            "search": search_backend(opts.search),
            "seconds": {"embed": round(t_embed, 2), "total": round(time.perf_counter() - t0, 2)}}
    rep = write_report(out, pool, groups, drops, clusters, meta, opts.sheet_rows)
    log(f"kept {rep['kept']} of {rep['samples']} samples ({rep['duplicate_groups']['count']} duplicate groups); "
        f"selection: {out / 'selection.json'} (data.sources[i].selection=...), report: {out / 'report.md'}")
    return rep
