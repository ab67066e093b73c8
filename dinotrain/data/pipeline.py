"""DALI graphs: the multi-crop training graph and the deterministic eval graph.

Both take encoded image bytes from an external source (the loader reads them from shards at
chosen offsets) and decode on the GPU (`device="mixed"`) when one is used, on the CPU
otherwise: the same graph either way. The training graph takes one row of random parameters
per crop (`augment.sample_params`), so all its randomness lives outside DALI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dinotrain.config import DataConfig
from dinotrain.data.augment import BLUR_WINDOW, Col, blur_p, solarize_p


@dataclass(frozen=True)
class GraphSpec:
    global_size: int
    local_size: int
    channels: int  # channels fed to the model
    gray: bool  # decode to one channel (grayscale sources); else RGB
    mean: float
    std: float


def resolve_device(device: str) -> tuple[str, int | None]:
    """('gpu', LOCAL_RANK) when asked for, or when `auto` and CUDA is there; else ('cpu', None)."""
    if device == "cpu":
        return "cpu", None
    import torch

    if device == "gpu" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("data.device=gpu but CUDA is not available: set data.device=auto or cpu")
        # under SLURM/submitit each task sees its own GPU, so LOCAL_RANK counts visible devices
        local = int(os.environ.get("LOCAL_RANK", 0))
        return "gpu", local % max(torch.cuda.device_count(), 1)
    return "cpu", None


# Integer pixels through decode and resize: DALI's CPU resize writes uint16 about 1.4x faster
# than float32 (measured: benchmarks/augment.py), and 16 bits keep 16-bit sources lossless
# (8-bit PNGs decode to v * 257). The float conversion happens in the first jitter expression.
PIXEL_MAX = 65535.0


def _decode(enc, gpu: bool, gray: bool, dtype=None):
    from nvidia.dali import fn, types

    return fn.decoders.image(
        enc, device="mixed" if gpu else "cpu", output_type=types.GRAY if gray else types.RGB,
        dtype=types.FLOAT if dtype is None else dtype,
    )


def _normalise(x, g: GraphSpec):
    return (x - g.mean) * (1.0 / g.std)


def _to_chw(x, g: GraphSpec):
    """HWC -> CHW, and repeat a grayscale channel when the model wants 3."""
    from nvidia.dali import fn

    if g.gray:
        # [H, W, 1] -> [1, H, W] moves no data: a reshape, not a transpose
        x = fn.reshape(x, src_dims=[2, 0, 1], layout="CHW")
        if g.channels == 3:
            x = fn.cat(x, x, x, axis=0)
        return x
    return fn.transpose(x, perm=[2, 0, 1], output_layout="CHW")


def _resized_crop(img, prm_cpu, c: int, size: int):
    """Crop `c`'s window of the uint16 image, bicubic-resized to size x size, mirrored when x0 > x1."""
    from nvidia.dali import fn, types

    return fn.resize(
        img,
        size=[size, size],
        roi_start=prm_cpu[c, Col.Y0 : Col.X0 + 1],  # (y, x): DALI's spatial order for HWC
        roi_end=prm_cpu[c, Col.Y1 : Col.X1 + 1],
        roi_relative=True,
        interp_type=types.INTERP_CUBIC,
        dtype=types.UINT16,  # bicubic overshoot saturates at 0 and PIXEL_MAX: the [0, 1] clip
    )


def _augment_crop(img, prm_cpu, prm, c: int, size: int, data: DataConfig, g: GraphSpec):
    """One crop: resized crop (+ mirror), intensity jitter, normalise, blur, solarise.

    DINOv2's order is jitter, blur, solarise, normalise. Normalising right after the jitter
    (in the same arithmetic op) gives the same numbers: the blur kernel sums to one, so it
    commutes with the affine normalisation, and solarisation is rewritten for normalised
    values below.
    """
    import nvidia.dali.math as dmath
    from nvidia.dali import fn

    x = dmath.clamp(_resized_crop(img, prm_cpu, c, size) * (prm[c, Col.BRIGHT] * (1.0 / PIXEL_MAX)), 0.0, 1.0)
    # contrast around the crop's own mean (torchvision's rule), gamma on [0, 1] data
    m = fn.reductions.mean(x)
    x = _normalise(dmath.pow(dmath.clamp((x - m) * prm[c, Col.CONTRAST] + m, 0.0, 1.0), prm[c, Col.GAMMA]), g)
    # blur / solarise only the samples whose flag is set: DALI conditionals split the batch
    # (cheaper than transforming every crop and blending), the flags come from the CPU rows;
    # the `else: x = x` branches are there because AutoGraph wants x assigned on both sides
    p_blur = blur_p(data, c)
    if p_blur >= 1:
        x = fn.gaussian_blur(x, sigma=prm_cpu[c, Col.SIGMA], window_size=BLUR_WINDOW)
    elif p_blur > 0:
        if prm_cpu[c, Col.BLUR] > 0.5:
            x = fn.gaussian_blur(x, sigma=prm_cpu[c, Col.SIGMA], window_size=BLUR_WINDOW)
        else:
            x = x
    if solarize_p(data, c) > 0:
        # v >= 0.5 -> 1 - v, written for n = (v - mean) / std: n >= t -> k - n
        t, k = (0.5 - g.mean) / g.std, (1.0 - 2.0 * g.mean) / g.std
        if prm_cpu[c, Col.SOLAR] > 0.5:
            x = x + (x >= t) * (k - 2.0 * x)
        else:
            x = x
    return _to_chw(x, g)


def train_pipeline(source, data: DataConfig, g: GraphSpec, batch_size: int, num_threads: int, device: str,
                   device_id: int | None, prefetch: int = 2):
    """A built DALI pipeline whose outputs are the n_global then n_local crop batches (CHW)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device == "gpu"

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=prefetch, exec_dynamic=True, enable_conditionals=True)
    def graph():
        enc, prm_cpu = fn.external_source(
            source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.FLOAT], ndim=[1, 2]
        )
        img = _decode(enc, gpu, g.gray, types.UINT16)
        prm = prm_cpu.gpu() if gpu else prm_cpu
        outs = []
        for c in range(data.global_crops_number + data.local_crops_number):
            size = g.global_size if c < data.global_crops_number else g.local_size
            outs.append(_augment_crop(img, prm_cpu, prm, c, size, data, g))
        return tuple(outs)

    pipe = graph()
    pipe.build()
    return pipe


def eval_pipeline(source, resolution: int, g: GraphSpec, batch_size: int, num_threads: int, device: str,
                  device_id: int | None):
    """RAD-DINO inference preprocessing: shorter side to `resolution` (bicubic), centre crop, normalise."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device == "gpu"

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def graph():
        enc, pos = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.FLOAT],
                                      ndim=[1, 1])
        img = _decode(enc, gpu, g.gray)
        x = fn.resize(img, resize_shorter=resolution, interp_type=types.INTERP_CUBIC, dtype=types.FLOAT)
        # per-image crop position (from eval_loader.centre_crop_pos): HF's floor((W - R) / 2) offset
        x = fn.crop(x, crop=[resolution, resolution], crop_pos_y=pos[0], crop_pos_x=pos[1])
        return _to_chw(_normalise(dmath_clamp(x), g), g)

    pipe = graph()
    pipe.build()
    return pipe


def dmath_clamp(x):
    """Bicubic overshoot clipped back into the decoded [0, 1] range."""
    import nvidia.dali.math as dmath

    return dmath.clamp(x, 0.0, 1.0)
