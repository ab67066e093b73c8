"""The random part of the DINOv2 multi-crop recipe, drawn in numpy and handed to DALI.

Drawing every crop window and every apply-flag here (instead of inside DALI's random ops)
makes the augmentation a function of (seed, step, rank): a resumed run produces the same
crops, and tests can check the apply-probabilities directly. Each probability in the config is
the probability of applying the transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dinotrain.config import DataConfig, default_of

# columns of the per-crop parameter rows fed to the DALI graph
Y0, X0, Y1, X1, BRIGHT, CONTRAST, GAMMA, BLUR, SIGMA, SOLAR, INTENSITY = range(11)
N_PARAMS = 11
BLUR_SIGMA = (0.1, 2.0)  # DINOv2's GaussianBlur radius range
BLUR_WINDOW = 9  # DINOv2 / torchvision kernel size


def _d(name: str):
    value = default_of(DataConfig, name)
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class AugmentSpec:
    """The augmentation part of the `data` section (defaults: the schema's)."""

    n_global: int = _d("global_crops_number")
    n_local: int = _d("local_crops_number")
    global_scale: tuple[float, float] = _d("global_crops_scale")
    local_scale: tuple[float, float] = _d("local_crops_scale")
    flip_p: float = _d("flip_p")
    intensity_p: float = _d("intensity_p")
    brightness: float = _d("brightness")
    contrast: float = _d("contrast")
    gamma: float = _d("gamma")
    blur_p_global1: float = _d("blur_p_global1")
    blur_p_global2: float = _d("blur_p_global2")
    solarize_p_global2: float = _d("solarize_p_global2")
    blur_p_local: float = _d("blur_p_local")

    @classmethod
    def from_config(cls, data) -> AugmentSpec:
        return cls(
            n_global=int(data.global_crops_number),
            n_local=int(data.local_crops_number),
            global_scale=tuple(data.global_crops_scale),
            local_scale=tuple(data.local_crops_scale),
            flip_p=data.flip_p,
            intensity_p=data.intensity_p,
            brightness=data.brightness,
            contrast=data.contrast,
            gamma=data.gamma,
            blur_p_global1=data.blur_p_global1,
            blur_p_global2=data.blur_p_global2,
            solarize_p_global2=data.solarize_p_global2,
            blur_p_local=data.blur_p_local,
        )

    def blur_p(self, crop: int) -> float:
        """Blur probability of crop `crop` (globals first, then locals)."""
        if crop >= self.n_global:
            return self.blur_p_local
        return self.blur_p_global1 if crop == 0 else self.blur_p_global2

    def solarize_p(self, crop: int) -> float:
        return self.solarize_p_global2 if crop == 1 and self.n_global > 1 else 0.0


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


def sample_params(rng: np.random.Generator, height: int, width: int, spec: AugmentSpec) -> np.ndarray:
    """[n_global + n_local, N_PARAMS] float32 rows for one image of size (height, width)."""
    n = spec.n_global + spec.n_local
    out = np.zeros((n, N_PARAMS), dtype=np.float32)
    for c in range(n):
        scale = spec.global_scale if c < spec.n_global else spec.local_scale
        top, left, h, w = resized_crop_window(rng, height, width, scale)
        y0, y1 = top / height, (top + h) / height
        x0, x1 = left / width, (left + w) / width
        if rng.random() < spec.flip_p:
            x0, x1 = x1, x0  # DALI's resize mirrors a region whose start is past its end
        out[c, [Y0, X0, Y1, X1]] = (y0, x0, y1, x1)
        if rng.random() < spec.intensity_p:
            out[c, INTENSITY] = 1.0
            out[c, BRIGHT] = rng.uniform(1 - spec.brightness, 1 + spec.brightness)
            out[c, CONTRAST] = rng.uniform(1 - spec.contrast, 1 + spec.contrast)
            out[c, GAMMA] = rng.uniform(1 - spec.gamma, 1 + spec.gamma)
        else:
            out[c, [BRIGHT, CONTRAST, GAMMA]] = 1.0
        out[c, BLUR] = float(rng.random() < spec.blur_p(c))
        out[c, SIGMA] = rng.uniform(*BLUR_SIGMA)
        out[c, SOLAR] = float(rng.random() < spec.solarize_p(c))
    return out
