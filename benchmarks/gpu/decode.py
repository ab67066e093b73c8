"""DALI on the same bytes: decode alone and the training multi-crop graph, on the CPU or `mixed`.

`device="cpu"` is the reference half (CI runs it), `device="gpu"` the candidate (decode with
`mixed`: nvJPEG2000 for J2K, the CPU inside the operator for PNG; crops on the GPU). Both
halves get the same bytes and the same per-crop parameter rows, so their outputs must agree
up to the float rounding of two resize/blur implementations.
"""

from __future__ import annotations

import time

import numpy as np


def _device_id(device: str) -> int | None:
    return 0 if device == "gpu" else None


def _samples(batch) -> list[np.ndarray]:
    """A DALI batch (CPU or GPU; shapes may differ per sample) as numpy arrays."""
    if hasattr(batch, "as_cpu"):
        batch = batch.as_cpu()
    return [np.array(batch.at(i)) for i in range(len(batch))]


def _to_numpy(batch) -> np.ndarray:
    """A DALI batch of equal shapes as one array [B, ...]."""
    return np.stack(_samples(batch))


def decode_pipeline(batch_size: int, device: str, num_threads: int, source, prefetch: int = 1):
    """encoded bytes -> grayscale uint16 (8-bit sources scale by 257, as in the training graph)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=_device_id(device),
                  prefetch_queue_depth=prefetch, exec_dynamic=True)
    def graph():
        # a callable is asked for every batch; a list of batches is cycled through
        kw = {} if callable(source) else {"cycle": True}
        enc = fn.external_source(source=source, batch=True, dtype=types.UINT8, ndim=1, **kw)
        return fn.decoders.image(enc, device="mixed" if device == "gpu" else "cpu", output_type=types.GRAY,
                                 dtype=types.UINT16)

    pipe = graph()
    pipe.build()
    return pipe


def decode(encoded: list[bytes], device: str, num_threads: int = 4) -> list[np.ndarray]:
    """Each image decoded by DALI as uint16 [H, W], all in one batch (sizes may differ)."""
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in encoded]
    pipe = decode_pipeline(len(arrays), device, num_threads, lambda: arrays)
    (imgs,) = pipe.run()
    return [a[..., 0] for a in _samples(imgs)]


def reference_decode(encoded: list[bytes]) -> list[np.ndarray]:
    """The stored pixels (shards.codecs, i.e. Pillow/zlib), widened as DALI widens them to uint16."""
    from shards.codecs import decode as decode_stored

    out = []
    for data in encoded:
        a = decode_stored(data)
        out.append(a.astype(np.uint16) * 257 if a.dtype == np.uint8 else a)
    return out


def max_abs_diff(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest |ref - got| over all arrays; inf when shapes differ (a mismatch, never a pass)."""
    worst = 0.0
    for a, b in zip(ref, got, strict=True):
        if a.shape != b.shape:
            return float("inf")
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        worst = max(worst, float(np.nanmax(d)) if d.size else 0.0)
        if np.isnan(d).any():
            return float("nan")
    return worst


def crop_params(encoded: list[bytes], data_cfg, seed: int = 0) -> list[np.ndarray]:
    """One row of augmentation parameters per crop and image, drawn as the training loader draws them."""
    from dinotrain.data.augment import augment_section, sample_params
    from dinotrain.data.loader import probe_image
    from shards.codecs import codec_of

    spec = augment_section(data_cfg)
    rng = np.random.default_rng(seed)
    params = []
    for data in encoded:
        hw = probe_image(data, codec_of(data) or "jpg")
        if hw is None:
            raise ValueError("an input image does not parse")
        params.append(sample_params(rng, hw[0], hw[1], spec))
    return params


def multicrop(encoded: list[bytes], params: list[np.ndarray], data_cfg, device: str,
              num_threads: int = 4) -> list[np.ndarray]:
    """The training graph's crops of one batch: [n_global + n_local] arrays [B, C, h, w] float32."""
    from dinotrain.data.augment import augment_section
    from dinotrain.data.pipeline import GraphSpec, train_pipeline

    spec = augment_section(data_cfg)
    g = GraphSpec(int(data_cfg.global_crops_size), int(data_cfg.local_crops_size), int(data_cfg.channels), True,
                  float(data_cfg.mean), float(data_cfg.std))
    batch = ([np.frombuffer(b, dtype=np.uint8) for b in encoded], params)
    pipe = train_pipeline(lambda: batch, spec, g, len(encoded), num_threads, device, _device_id(device), prefetch=1)
    return [_to_numpy(o) for o in pipe.run()]


def decode_rate(encoded: list[bytes], device: str, batch_size: int, seconds: float = 5.0,
                num_threads: int = 8) -> dict:
    """Decode-only images/s of one pipeline fed the same batches in a loop (after a warm-up batch)."""
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in encoded]
    batches = [arrays[i : i + batch_size] for i in range(0, len(arrays) - batch_size + 1, batch_size)] or [arrays]
    pipe = decode_pipeline(len(batches[0]), device, num_threads, batches, prefetch=2)
    pipe.run()  # allocations, decoder start-up
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        (out,) = pipe.run()
        n += len(out)
    if device == "gpu":
        out.as_cpu()  # waits for the last batch's GPU work
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "images": n, "seconds": dt, "batch": len(batches[0]), "threads": num_threads,
            "mean_bytes": float(np.mean([len(b) for b in encoded]))}
