"""The multi-crop recipe as batched torch ops: the torch backend's twin of the DALI graph.

Input: a batch of decoded images (sizes may differ) and the same per-crop parameter rows the
DALI graph takes (`augment.sample_params`). Every step mirrors `pipeline._augment_crop`:

- resized crop: antialiased bicubic (Keys, a = -0.5; the kernel widened by the scale when
  shrinking, borders clamped, as DALI's resampling) written as two resampling matrices per
  crop, so a whole batch of windows of different sizes is two batched matmuls
  (`out = Wy @ img @ Wx^T`); a window whose x0 > x1 comes out mirrored, as in DALI;
- the uint16 rounding of DALI's resize output, brightness, contrast around the crop's mean,
  gamma, normalisation, Gaussian blur (window 9, reflect-101 borders) and solarisation on the
  crops whose flags are set.

Everything runs on the images' device (CPU or GPU); nothing here draws a random number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinotrain.data.augment import BLUR_WINDOW, Col

CUBIC_A = -0.5  # Keys' cubic convolution (Catmull-Rom), DALI's and PIL's bicubic


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel, zero for |x| >= 2."""
    a, x = CUBIC_A, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_matrix(start: torch.Tensor, end: torch.Tensor, in_size: torch.Tensor, out: int,
                    padded: int) -> torch.Tensor:
    """[N, out, padded] weights taking pixels [start, end) of each row of length in_size to `out` pixels.

    start/end are in pixels (end < start mirrors); output pixel i samples the input at
    start + (i + 0.5) * scale; shrinking widens the kernel by the scale (antialiasing); taps past
    the border read the edge pixel. Rows sum to one.
    """
    scale = (end - start) / out  # signed: negative mirrors
    width = scale.abs().clamp(min=1.0)  # the kernel's stretch: > 1 when shrinking
    n_taps = int(torch.ceil(4 * width.max()).item()) + 2
    i = torch.arange(out, device=start.device, dtype=start.dtype)
    centre = start[:, None] + (i[None] + 0.5) * scale[:, None]  # [N, out]
    first = torch.floor(centre - 2 * width[:, None] - 0.5)
    taps = first[..., None] + torch.arange(n_taps, device=start.device, dtype=start.dtype)  # [N, out, K]
    w = cubic((taps + 0.5 - centre[..., None]) / width[:, None, None])
    w = w / w.sum(-1, keepdim=True)
    index = torch.minimum(taps.clamp(min=0), (in_size[:, None, None] - 1).to(taps.dtype)).long()
    m = torch.zeros(start.shape[0], out, padded, device=start.device, dtype=start.dtype)
    return m.scatter_add_(2, index, w)


def resized_crop(img: torch.Tensor, sizes: torch.Tensor, rows: torch.Tensor, out: int) -> torch.Tensor:
    """[B, C, H, W] padded images (sizes [B, 2] = true h, w) -> [B, C, out, out] crops of the windows in rows."""
    h, w = sizes[:, 0].to(img.dtype), sizes[:, 1].to(img.dtype)
    wy = resample_matrix(rows[:, Col.Y0] * h, rows[:, Col.Y1] * h, sizes[:, 0], out, img.shape[-2])
    wx = resample_matrix(rows[:, Col.X0] * w, rows[:, Col.X1] * w, sizes[:, 1], out, img.shape[-1])
    x = torch.matmul(wy[:, None], img)  # [B, C, out, W]
    x = torch.matmul(x, wx[:, None].transpose(-1, -2))  # [B, C, out, out]
    # DALI writes the resize as uint16: saturated to [0, 1] and rounded to 1/65535
    return torch.round(x.clamp(0.0, 1.0) * 65535.0) * (1.0 / 65535.0)


def jitter_normalise(x: torch.Tensor, rows: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Brightness, contrast around each crop's own mean, gamma (all on [0, 1]), then (x - mean) / std."""
    def col(k: int) -> torch.Tensor:
        return rows[:, k, None, None, None]

    x = (x * col(Col.BRIGHT)).clamp(0.0, 1.0)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - m) * col(Col.CONTRAST) + m).clamp(0.0, 1.0).pow(col(Col.GAMMA))
    return (x - mean) * (1.0 / std)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, window: int = BLUR_WINDOW) -> torch.Tensor:
    """Each image of [N, C, H, W] blurred with its own sigma: separable, reflect-101 borders."""
    n, c, hh, ww = x.shape
    r = window // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*C, window]
    y = x.reshape(1, n * c, hh, ww)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, hh, ww)


def solarise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """v >= 0.5 -> 1 - v, written for normalised n = (v - mean) / std: n >= t -> k - n."""
    t, k = (0.5 - mean) / std, (1.0 - 2.0 * mean) / std
    return torch.where(x >= t, k - x, x)


def augment_crops(img: torch.Tensor, sizes: torch.Tensor, params: torch.Tensor, crops: range, out: int,
                  mean: float, std: float) -> torch.Tensor:
    """Crops `crops` of every image, crop-major: [len(crops) * B, C, out, out] normalised."""
    x = torch.cat([resized_crop(img, sizes, params[:, c], out) for c in crops])
    rows = torch.cat([params[:, c] for c in crops])
    x = jitter_normalise(x, rows, mean, std)
    blur = torch.nonzero(rows[:, Col.BLUR] > 0.5).flatten()
    if blur.numel():
        x[blur] = gaussian_blur(x[blur], rows[blur, Col.SIGMA])
    solar = torch.nonzero(rows[:, Col.SOLAR] > 0.5).flatten()
    if solar.numel():
        x[solar] = solarise(x[solar], mean, std)
    return x


def pad_batch(arrays: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded uint8/uint16 arrays ([H, W] or [H, W, 3]) -> ([B, C, Hmax, Wmax] in [0, 1] on device, sizes [B, 2]).

    Pixels travel as integers (a quarter of float32's bytes) and become floats on the device.
    """
    import numpy as np

    hs, ws = [a.shape[0] for a in arrays], [a.shape[1] for a in arrays]
    c = 1 if arrays[0].ndim == 2 else arrays[0].shape[2]
    wide = any(a.dtype == np.uint16 for a in arrays)
    buf = np.zeros((len(arrays), max(hs), max(ws), c), dtype=np.int32 if wide else np.uint8)
    for i, a in enumerate(arrays):
        # 8-bit in a 16-bit batch is widened as DALI widens it (v * 257): both reach v / 255
        buf[i, : a.shape[0], : a.shape[1]] = (a.astype(np.int32) * 257 if wide and a.dtype == np.uint8 else a).reshape(
            a.shape[0], a.shape[1], c)
    t = torch.from_numpy(buf).to(device, non_blocking=True)
    img = t.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / (65535.0 if wide else 255.0))
    return img, torch.tensor(list(zip(hs, ws)), device=device)


def multicrop(arrays: list, params, n_global: int, n_local: int, graph, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(global crops [n_global*B, C, H, H], local crops [n_local*B, C, h, h]) as the DALI graph makes them.

    `params` [B, n_global + n_local, N_PARAMS] (numpy or torch); `graph` a pipeline.GraphSpec.
    """
    img, sizes = pad_batch(arrays, device)
    prm = torch.as_tensor(params, dtype=torch.float32).to(device)
    out = []
    for crops, size in ((range(n_global), graph.global_size), (range(n_global, n_global + n_local), graph.local_size)):
        if len(crops) == 0:
            out.append(torch.empty((0, graph.channels, size, size), device=device))
            continue
        x = augment_crops(img, sizes, prm, crops, size, graph.mean, graph.std)
        if x.shape[1] == 1 and graph.channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        out.append(x)
    return out[0], out[1]
