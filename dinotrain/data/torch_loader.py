"""The torch loader backend: Pillow decode in worker processes, batched torch augmentation.

For machines without DALI (AMD/ROCm clusters, locked-down or bare GPU nodes). The training
loader draws every batch exactly as for DALI (samples, `sample_params` rows, iBOT masks: see
`loader.TrainLoader._draw`); this module only turns the drawn bytes into crops, so the two
backends are interchangeable and resume the same way.

A batch's images are split into one decode task per worker; `prefetch` batches stay in flight,
so decoding overlaps the training step. A batch whose drawing failed (every sample corrupt)
keeps its exception in the queue and raises when its turn comes, as DALI raises it at `run()`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


def resolve_backend(choice: str) -> tuple[str, str]:
    """('dali' | 'torch', why): `auto` takes DALI when `nvidia.dali` imports."""
    if choice in ("dali", "torch"):
        if choice == "dali":
            why = _dali_missing()
            if why:
                from dinotrain.config import ConfigError

                raise ConfigError(f"data.backend=dali but {why}: install nvidia-dali-cuda130 (or -cuda120), "
                                  "or set data.backend=torch (or auto)")
        return choice, f"data.backend={choice}"
    why = _dali_missing()
    return ("torch", f"data.backend=auto and {why}") if why else ("dali", "data.backend=auto and DALI imports")


def _dali_missing() -> str | None:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:  # a missing or broken install alike
        return f"nvidia.dali is not importable ({e})"
    return None


class TorchProducer:
    """Decoded, augmented batches from a `draw()` callable; see the module docstring.

    draw() -> (encoded images, params [B, n_crops, N_PARAMS], meta dict): called in batch order.
    """

    def __init__(self, draw: Callable, gray: bool, workers: int, prefetch: int, n_global: int, n_local: int,
                 graph, device):
        self.draw, self.gray = draw, gray
        self.workers, self.prefetch = max(1, int(workers)), max(0, int(prefetch))
        self.n_global, self.n_local, self.graph, self.device = n_global, n_local, graph, device
        self._pool = None
        self._inflight: deque = deque()

    def _executor(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork where there is one, as torch's DataLoader: no re-import of the user's __main__ (spawn's
            # requirement of a `__main__` guard), and the workers never touch torch or CUDA (decode.py)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))
        return self._pool

    def _submit(self) -> None:
        from dinotrain.data.decode import decode_many

        try:
            encoded, params, meta = self.draw()
        except Exception as e:  # noqa: BLE001 - raised when this batch is asked for
            self._inflight.append(e)
            return
        pool = self._executor()
        share = -(-len(encoded) // self.workers)
        futures = [pool.submit(decode_many, encoded[i : i + share], self.gray) for i in range(0, len(encoded), share)]
        self._inflight.append((meta, params, futures))

    def next(self):
        """(meta, global crops, local crops) of the next batch."""
        from dinotrain.data.torch_augment import multicrop

        while len(self._inflight) < self.prefetch + 1 and not any(isinstance(e, Exception) for e in self._inflight):
            self._submit()
        entry = self._inflight.popleft()
        if isinstance(entry, Exception):
            self.reset()
            raise entry
        meta, params, futures = entry
        arrays = [a for f in futures for a in f.result()]
        if self.prefetch:
            self._submit()  # keep the workers busy while this batch is augmented and trained on
        g, loc = multicrop(arrays, np.asarray(params), self.n_global, self.n_local, self.graph, self.device)
        return meta, g, loc

    def reset(self) -> None:
        """Forget the batches in flight (the caller rewinds the sample stream)."""
        for entry in self._inflight:
            if not isinstance(entry, Exception):
                for f in entry[2]:
                    f.cancel()
        self._inflight.clear()

    def close(self) -> None:
        self.reset()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
