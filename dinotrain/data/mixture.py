"""Data mixtures: which sample comes next, for every rank, as a pure function of the seed.

- A source's subset is a prefix of one seed-fixed order of its sample keys (hash of seed and
  key), so `max_samples` subsets are nested (10% inside 30% inside all) and do not depend on
  how the shards were cut.
- Each global batch (batch_size x world_size slots) draws a source per slot with the weights;
  every source walks through a fresh permutation of its subset per epoch. All ranks compute
  the same global stream and each takes its own slice, so ranks are disjoint and, within a
  source's epoch, each sample is used exactly once across ranks (whatever the shard count).
- The whole position is a few integers (`MixtureStream.state`), which is what makes exact
  resume possible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from dinotrain.data.shard_index import SampleRef

# stream ids for np.random.SeedSequence, so the draws of different purposes never collide
SEED_MIX, SEED_EPOCH, SEED_AUGMENT, SEED_MASK = 11, 12, 13, 14


def subset_order(keys: list[str], seed: int) -> np.ndarray:
    """Indices of `keys` in the seed-fixed order whose prefixes are the nested subsets."""
    digests = [hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest() for k in keys]
    return np.array(sorted(range(len(keys)), key=digests.__getitem__), dtype=np.int64)


def subset_size(total: int, max_samples: float | None) -> int:
    if max_samples is None:
        return total
    n = int(round(max_samples * total)) if max_samples < 1 else int(max_samples)
    return max(1, min(total, n))


def name_id(name: str) -> int:
    """A stable integer for a source name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


@dataclass
class Source:
    name: str
    path: str
    weight: float
    refs: list[SampleRef]  # the chosen subset, in subset order
    total: int  # samples of the split before subsetting


def make_source(name: str, path: str, weight: float, refs: list[SampleRef], max_samples, seed: int) -> Source:
    order = subset_order([r.key for r in refs], seed)
    n = subset_size(len(refs), max_samples)
    return Source(name, path, float(weight), [refs[i] for i in order[:n]], len(refs))


@dataclass
class MixtureStream:
    """The global sample stream over several sources; `state` is all it takes to resume."""

    sources: list[Source]
    batch_size: int
    world_size: int
    seed: int
    step: int = 0  # global batches produced
    epoch: list[int] = field(default_factory=list)
    cursor: list[int] = field(default_factory=list)
    drawn: list[int] = field(default_factory=list)
    _perms: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        n = len(self.sources)
        self.epoch = self.epoch or [0] * n
        self.cursor = self.cursor or [0] * n
        self.drawn = self.drawn or [0] * n
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.probs = w / w.sum()

    def _perm(self, s: int) -> np.ndarray:
        key = (s, self.epoch[s])
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != s}
            rng = np.random.default_rng([self.seed, SEED_EPOCH, name_id(self.sources[s].name), self.epoch[s]])
            self._perms[key] = rng.permutation(len(self.sources[s].refs))
        return self._perms[key]

    def next_global(self) -> list[tuple[int, SampleRef]]:
        """The (source index, sample) of every slot of the next global batch, rank-major."""
        n = self.batch_size * self.world_size
        if len(self.sources) == 1:
            choice = np.zeros(n, dtype=np.int64)
        else:
            choice = np.random.default_rng([self.seed, SEED_MIX, self.step]).choice(len(self.sources), n, p=self.probs)
        out = []
        for s in choice.tolist():
            perm = self._perm(s)
            out.append((s, self.sources[s].refs[int(perm[self.cursor[s]])]))
            self.cursor[s] += 1
            self.drawn[s] += 1
            if self.cursor[s] == len(perm):
                self.epoch[s] += 1
                self.cursor[s] = 0
        self.step += 1
        return out

    def next_for_rank(self, rank: int) -> list[tuple[int, SampleRef]]:
        b = self.batch_size
        return self.next_global()[rank * b : (rank + 1) * b]

    @property
    def state(self) -> dict:
        return {"step": self.step, "epoch": list(self.epoch), "cursor": list(self.cursor), "drawn": list(self.drawn)}

    def load_state(self, state: dict) -> None:
        n = len(self.sources)
        for k in ("epoch", "cursor", "drawn"):
            if len(state[k]) != n:
                raise ValueError(
                    f"loader state has {len(state[k])} sources but data.sources has {n}: "
                    "resume with the data config the run was started with"
                )
        self.step = int(state["step"])
        self.epoch = [int(v) for v in state["epoch"]]
        self.cursor = [int(v) for v in state["cursor"]]
        self.drawn = [int(v) for v in state["drawn"]]
        self._perms = {}
