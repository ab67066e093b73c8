"""The random part of the DINOv2 multi-crop recipe, drawn in numpy and handed to DALI.

Drawing every crop window and every apply-flag here (instead of inside DALI's random ops)
makes the augmentation a function of (seed, step, rank): a resumed run produces the same
crops, and tests can check the apply-probabilities directly. Each probability in the config is
the probability of applying the transform.
"""

from __future__ import annotations

import math

import numpy as np
from omegaconf import OmegaConf

from dinotrain.config import DataConfig


class Col:
    """Columns of one crop's parameter row (`sample_params`), as the DALI graph and the torch ops
    read them: the crop window (fractions of the image; x0 > x1 is a mirrored crop), the
    intensity factors, the blur flag and sigma, the solarise flag, the jitter flag. Plain ints,
    so they index numpy, torch and DALI alike."""

    Y0, X0, Y1, X1, BRIGHT, CONTRAST, GAMMA, BLUR, SIGMA, SOLAR, INTENSITY = range(11)


N_PARAMS = Col.INTENSITY + 1
BLUR_SIGMA = (0.1, 2.0)  # DINOv2's GaussianBlur radius range
BLUR_WINDOW = 9  # DINOv2 / torchvision kernel size


def augment_section(data) -> DataConfig:
    """The config's `data` section (a DictConfig, or already a `DataConfig`) as a `DataConfig`
    object: the augmentation reads it for every crop of every image, at plain attribute speed."""
    if isinstance(data, DataConfig):
        return data
    return OmegaConf.to_object(data)


def blur_p(data: DataConfig, crop: int) -> float:
    """Blur probability of crop `crop` (globals first, then locals)."""
    if crop >= data.global_crops_number:
        return data.blur_p_local
    return data.blur_p_global1 if crop == 0 else data.blur_p_global2


def solarize_p(data: DataConfig, crop: int) -> float:
    """Solarisation probability of crop `crop`: only the second global crop's."""
    return data.solarize_p_global2 if crop == 1 and data.global_crops_number > 1 else 0.0


def resized_crop_window(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized-crop window, as torchvision draws it.

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`, 10 tries; then a
    centre crop with the ratio clamped into range.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def sample_params(rng: np.random.Generator, height: int, width: int, data: DataConfig) -> np.ndarray:
    """[n_global + n_local, N_PARAMS] float32 rows for one image of size (height, width); `data`:
    the `data` section (see `augment_section`)."""
    n_global = data.global_crops_number
    n = n_global + data.local_crops_number
    out = np.zeros((n, N_PARAMS), dtype=np.float32)
    for c in range(n):
        scale = data.global_crops_scale if c < n_global else data.local_crops_scale
        top, left, h, w = resized_crop_window(rng, height, width, scale)
        y0, y1 = top / height, (top + h) / height
        x0, x1 = left / width, (left + w) / width
        if rng.random() < data.flip_p:
            x0, x1 = x1, x0  # DALI's resize mirrors a region whose start is past its end
        out[c, [Col.Y0, Col.X0, Col.Y1, Col.X1]] = (y0, x0, y1, x1)
        if rng.random() < data.intensity_p:
            out[c, Col.INTENSITY] = 1.0
            out[c, Col.BRIGHT] = rng.uniform(1 - data.brightness, 1 + data.brightness)
            out[c, Col.CONTRAST] = rng.uniform(1 - data.contrast, 1 + data.contrast)
            out[c, Col.GAMMA] = rng.uniform(1 - data.gamma, 1 + data.gamma)
        else:
            out[c, [Col.BRIGHT, Col.CONTRAST, Col.GAMMA]] = 1.0
        out[c, Col.BLUR] = float(rng.random() < blur_p(data, c))
        out[c, Col.SIGMA] = rng.uniform(*BLUR_SIGMA)
        out[c, Col.SOLAR] = float(rng.random() < solarize_p(data, c))
    return out
