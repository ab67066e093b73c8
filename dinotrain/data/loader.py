"""The training loader: mixture stream -> shard reads -> multi-crop (DALI graph or torch ops) -> batch dicts.

`build_train_loader(cfg, rank, world_size)` gives an infinite iterator (epochs roll over per
source; the trainer counts steps) with `state_dict()` / `load_state_dict()` for exact resume
and `stats()` for the effective dataset. A batch holds

    global_crops  [n_global*B, C, H, W] float32, crop-major (all first crops, then all second)
    local_crops   [n_local*B, C, h, w]  float32, crop-major
    masks         [n_global*B, N] bool, N = (global_crops_size / patch_size)^2
    mask_indices_list, masks_weight, n_masked_patches, upperbound  (DINOv2's iBOT collate)
    keys, dataset, modality, source   lists of B strings

Crops are on the GPU when the augmentation runs there (`data.device`), masks always on the CPU.
`data.backend` picks who makes the crops: DALI (`pipeline.py`) or torch (`torch_loader.py`:
Pillow decode in worker processes, `torch_augment.py` ops); both get the same samples, the
same `sample_params` rows and the same masks from `_draw`, so they resume alike.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections import deque
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from dinotrain.data.augment import augment_section, sample_params
from dinotrain.data.masking import batch_masks
from dinotrain.data.mixture import SEED_AUGMENT, SEED_MASK, MixtureStream, make_source
from dinotrain.data.pipeline import GraphSpec, resolve_device, train_pipeline
from dinotrain.data.selection import apply_selection
from dinotrain.data.shard_index import DataError, SampleRef, ShardReader, index_source, sample_span
from dinotrain.data.torch_loader import TorchProducer, resolve_backend

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
STATE_VERSION = 1
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


class Batch(TypedDict):
    """One training batch, as the loader makes it (the module docstring gives the shapes): the
    names and types its consumers (the trainer, the losses, `data preview`) read. Every tensor
    goes to the training device; the lists and `aug_params` stay on the host."""

    global_crops: torch.Tensor
    local_crops: torch.Tensor
    masks: torch.Tensor
    mask_indices_list: torch.Tensor
    masks_weight: torch.Tensor
    n_masked_patches: torch.Tensor
    upperbound: int
    keys: list[str]
    dataset: list[str]
    modality: list[str]
    source: list[str]
    aug_params: np.ndarray  # [B, n_crops, N_PARAMS]: what was applied (preview, tests)


def probe_image(data: bytes, ext: str) -> tuple[int, int] | None:
    """(height, width) from the header, or None when the bytes are not a whole image.

    PNG: every chunk's CRC is checked (PIL's verify, no decompression), which catches
    truncation and flipped bits; JPEG and JPEG 2000: header plus the end marker (both FFD9).
    """
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if ext == "png":
                im.verify()
            elif not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                return None
        return height, width
    except Exception:  # any decoder complaint means: not a usable image
        return None


def image_mode(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.mode


class TrainLoader:
    """Infinite iterator of multi-crop batches for one rank; see the module docstring."""

    def __init__(self, cfg, rank: int = 0, world_size: int = 1, prefetch: int = 2):
        from dinotrain.config import ConfigError

        d = cfg.data
        if not d.sources:
            raise ConfigError("data.sources is empty: add at least one {name, path} (a `shards build` output folder)")
        names = [s.name for s in d.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.sources: names must be unique (got {names})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.batch_size = int(d.batch_size_per_gpu)
        self.seed = int(d.seed)
        sources = []
        for s in d.sources:
            refs = apply_selection(index_source(s.path, s.split), s.selection, s.path)
            if not refs:  # a selection that keeps nothing of a set: say so, not an IndexError later
                raise DataError(f"data.sources '{s.name}' ({s.path}): no {s.split} sample left"
                                + (f" after its selection {s.selection}" if s.selection else "")
                                + "; drop the source from data.sources or select samples from it")
            sources.append(make_source(s.name, s.path, s.weight, refs, s.max_samples, self.seed))
        self.stream = MixtureStream(sources, self.batch_size, world_size, self.seed)
        self.aug = augment_section(d)  # the data section, read per crop
        patch = int(cfg.model.patch_size)
        self.grid = int(d.global_crops_size) // patch
        self.mask_args = (float(cfg.ssl.mask_ratio_min), float(cfg.ssl.mask_ratio_max),
                          float(cfg.ssl.mask_sample_probability))
        self.reader = ShardReader()
        self.backend, self.backend_reason = resolve_backend(str(d.get("backend", "auto")))
        self.device, self.device_id = resolve_device(d.device)
        gray = int(d.channels) == 1 or all(self._is_gray(s.refs[0]) for s in sources)
        self.graph = GraphSpec(int(d.global_crops_size), int(d.local_crops_size), int(d.channels), gray,
                               float(d.mean), float(d.std))
        self.num_threads = int(d.num_threads)
        self.prefetch = prefetch
        self._pipe = None
        self._torch: TorchProducer | None = None
        self._pending: deque = deque()
        self._consumed = self.stream.state
        self._skipped = 0
        self._error: BaseException | None = None
        log.info("data: %s", self.describe())

    # ------------------------------------------------------------------ reading
    def _read_all(self, refs: list[SampleRef]) -> list[tuple[bytes, dict | None]]:
        """(image bytes, metadata or None when its json is unreadable) per sample: one read each."""
        spans = [sample_span(r) for r in refs]
        blobs = self.reader.read_many([(r.shard, lo, n) for r, (lo, n) in zip(refs, spans)])
        out = []
        for ref, (lo, n), blob in zip(refs, spans, blobs):
            img = blob[ref.image_offset - lo : ref.image_offset - lo + ref.image_size]
            if ref.meta_offset < 0:
                out.append((img, {}))
                continue
            if lo <= ref.meta_offset and ref.meta_offset + ref.meta_size <= lo + n:
                raw = blob[ref.meta_offset - lo : ref.meta_offset - lo + ref.meta_size]
            else:
                raw = self.reader.read_many([(ref.shard, ref.meta_offset, ref.meta_size)])[0]
            try:
                meta = json.loads(raw)
            except ValueError:
                meta = None  # flagged as corrupt by the caller
            out.append((img, meta if isinstance(meta, dict) else None))
        return out

    def _is_gray(self, ref: SampleRef) -> bool:
        ((img, _),) = self._read_all([ref])
        try:
            return image_mode(img) in GRAY_MODES
        except Exception:
            return True  # a corrupt first sample says nothing; it is skipped later

    # ------------------------------------------------------------------ producing (called by DALI)
    def _produce(self):
        try:
            return self._produce_batch()
        except BaseException as e:
            self._error = e
            raise

    def _produce_batch(self):
        encoded, params, meta = self._draw()
        self._pending.append(meta)
        return [np.frombuffer(b, dtype=np.uint8) for b in encoded], params

    def _draw(self) -> tuple[list[bytes], list[np.ndarray], dict]:
        """The next batch of this rank: encoded images, crop parameters per image, and its batch fields."""
        step = self.stream.step
        slots = self.stream.next_for_rank(self.rank)
        state_after = self.stream.state
        items = []
        for (s, ref), (img, meta) in zip(slots, self._read_all([ref for _, ref in slots])):
            hw = probe_image(img, ref.image_ext) if meta is not None else None
            items.append((s, ref, img, meta, hw))
        good = [i for i, it in enumerate(items) if it[4] is not None]
        if not good:
            bad = ", ".join(f"{it[1].shard}:{it[1].key}" for it in items)
            raise DataError(f"every sample of a batch is corrupt ({bad}); rebuild them with `dinotrain shards build`")
        for i, it in enumerate(items):
            if it[4] is None:
                warnings.warn(
                    f"shard {it[1].shard}: sample '{it[1].key}' is corrupt (image or json unreadable); "
                    f"skipped on rank {self.rank}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                # the next good sample of this batch stands in: deterministic, batch size kept
                items[i] = items[next((j for j in good if j > i), good[0])]
        rng = np.random.default_rng([self.seed, SEED_AUGMENT, step, self.rank])
        params = [sample_params(rng, it[4][0], it[4][1], self.aug) for it in items]
        masks = batch_masks(
            np.random.default_rng([self.seed, SEED_MASK, step, self.rank]),
            self.aug.global_crops_number * self.batch_size,
            self.grid,
            *self.mask_args,
        )
        names = [s.name for s in self.stream.sources]
        meta = {
            "state": state_after,
            # counted when the batch is handed out, not when DALI prefetches it: a prefetched batch is
            # drawn again after a stop or resume, and its skips must count once
            "skipped": len(items) - len(good),
            "keys": [it[1].key for it in items],
            "source": [names[it[0]] for it in items],
            "dataset": [str(it[3].get("dataset", names[it[0]])) for it in items],
            "modality": [str(it[3].get("modality", "unknown")) for it in items],
            "masks": masks,
            "params": np.stack(params),
        }
        return [it[2] for it in items], params, meta

    # ------------------------------------------------------------------ iteration
    def _start(self) -> None:
        self._pending.clear()
        self._error = None
        if self.backend == "torch":
            import torch

            dev = torch.device("cuda", self.device_id or 0) if self.device == "gpu" else torch.device("cpu")
            self._torch = self._torch or TorchProducer(self._draw, self.graph.gray, self.num_threads, self.prefetch,
                                                       self.aug.global_crops_number, self.aug.local_crops_number,
                                                       self.graph, dev)
            return
        self._pipe = train_pipeline(self._produce, self.aug, self.graph, self.batch_size, self.num_threads,
                                    self.device, self.device_id, self.prefetch)

    def _stop(self) -> None:
        self._pipe = None  # DALI frees its threads and buffers with the pipeline
        if self._torch is not None:
            self._torch.reset()  # the worker processes stay for the next batches
        self._pending.clear()
        # batches DALI prefetched but nobody received are drawn again by the next pipeline
        self.stream.load_state(self._consumed)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        import torch

        if self._pipe is None and self._torch is None:
            self._start()
        if self._torch is not None:
            try:
                meta, global_crops, local_crops = self._torch.next()
            except Exception:
                self._stop()
                raise
        else:
            meta, global_crops, local_crops = self._next_dali()
        self._consumed = meta["state"]
        self._skipped += meta["skipped"]
        m = meta["masks"]
        return Batch(
            global_crops=global_crops,
            local_crops=local_crops,
            masks=torch.from_numpy(m["masks"]),
            mask_indices_list=torch.from_numpy(m["mask_indices_list"]),
            masks_weight=torch.from_numpy(m["masks_weight"]),
            n_masked_patches=torch.tensor([m["n_masked_patches"]], dtype=torch.long),
            upperbound=m["upperbound"],
            keys=meta["keys"],
            dataset=meta["dataset"],
            modality=meta["modality"],
            source=meta["source"],
            aug_params=meta["params"],
        )

    def _next_dali(self):
        import torch

        try:
            outs = self._pipe.run()
        except Exception:
            err, self._error = self._error, None
            self._stop()
            if err is not None:
                raise err from None
            raise
        meta = self._pending.popleft()
        ng, nl = self.aug.global_crops_number, self.aug.local_crops_number
        local = (_stack_crops(outs[ng:], self.device, self.device_id) if nl else
                 torch.empty((0, self.graph.channels, self.graph.local_size, self.graph.local_size)))
        return meta, _stack_crops(outs[:ng], self.device, self.device_id), local

    # ------------------------------------------------------------------ resume and reporting
    def _fingerprint(self) -> list:
        return [[s.name, len(s.refs), s.total] for s in self.stream.sources] + [self.batch_size, self.world_size, self.seed]

    def state_dict(self) -> dict:
        """Position after the last batch handed out: restoring it replays the following batches."""
        return {"version": STATE_VERSION, "stream": dict(self._consumed), "fingerprint": self._fingerprint(),
                "skipped": self._skipped}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        if state["fingerprint"] != self._fingerprint():
            raise ValueError(
                f"loader state was saved for sources/batch/world/seed {state['fingerprint']} but this run has "
                f"{self._fingerprint()}: resume with the same data config, batch size and number of processes"
            )
        self._stop()
        self.stream.load_state(state["stream"])
        self._consumed = self.stream.state
        self._skipped = int(state.get("skipped", 0))

    def stats(self) -> dict:
        """The effective dataset: per source its size, subset used, samples drawn and epochs seen."""
        st = self._consumed
        sources = []
        for i, s in enumerate(self.stream.sources):
            sources.append({
                "name": s.name,
                "path": s.path,
                "weight": s.weight,
                "samples_total": s.total,
                "samples_used": len(s.refs),
                "samples_drawn": st["drawn"][i],
                "epochs_seen": st["drawn"][i] / len(s.refs),
            })
        return {"step": st["step"], "sources": sources, "skipped_corrupt": self._skipped}

    def describe(self) -> str:
        parts = [f"{s.name}: {len(s.refs)}/{s.total} samples, weight {s.weight:g}" for s in self.stream.sources]
        if self.backend == "torch":
            where = f"torch on {self.device} ({max(1, self.num_threads)} decode processes)"
        else:
            where = f"DALI on {self.device}"
        return f"{'; '.join(parts)} | {where} ({self.backend_reason}) | rank {self.rank}/{self.world_size}"

    def close(self) -> None:
        self._stop()
        if self._torch is not None:
            self._torch.close()
            self._torch = None
        self.reader.close()


def _stack_crops(outs, device: str, device_id: int | None = None):
    """Per-crop DALI batches -> one crop-major torch tensor, copied straight into place."""
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    first = outs[0].as_tensor()
    b, shape = first.shape()[0], first.shape()[1:]
    gpu = device == "gpu"
    target = torch.device("cuda", device_id or 0) if gpu else torch.device("cpu")
    out = torch.empty((len(outs) * b, *shape), dtype=torch.float32, device=target)
    stream = torch.cuda.current_stream(target) if gpu else None
    for k, o in enumerate(outs):
        t = first if k == 0 else o.as_tensor()
        feed_ndarray(t, out[k * b : (k + 1) * b], cuda_stream=stream)
    return out


def build_train_loader(cfg, rank: int = 0, world_size: int = 1) -> TrainLoader:
    """The training loader for this rank (reads cfg.data, cfg.model.patch_size and cfg.ssl masks)."""
    return TrainLoader(cfg, rank, world_size)
