"""What a run reports: metrics.jsonl (+ TensorBoard when installed), collapse indicators, MFU.

The indicator functions are pure (tensors in, floats out); `MetricsLog` only writes.
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

import torch
import torch.nn.functional as F

from dinotrain.run_layout import metrics_path

# dense bf16 tensor-core peaks (FLOP/s) of common cards, for the MFU estimate
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
              "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row entropy (nats) of probability rows."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(-1)


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred feature matrix (Roy &
    Vetterli): 1 for features on a line, up to min(n, d) for spread ones."""
    x = features.float()
    x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(entropy(p.unsqueeze(0))[0]))


def collapse_stats(cls_features: torch.Tensor, teacher_probs: torch.Tensor) -> dict[str, float]:
    """Collapse indicators of a batch.

    - `cls_std`: mean per-dimension std of L2-normalised CLS features times sqrt(dim): about 1
      for features spread over the sphere, 0 when every image maps to the same point.
    - `cls_effective_rank`: effective rank of those features.
    - `teacher_entropy`: mean entropy of the teacher's target distributions (0 = one-hot);
      `teacher_batch_entropy`: entropy of their batch mean, i.e. how many prototypes are in use
      (exp of it ~ active prototypes); near 0 means every image gets the same prototype.
    """
    z = F.normalize(cls_features.detach().float(), dim=-1)
    d = z.shape[-1]
    std = float(z.std(0).mean() * math.sqrt(d)) if z.shape[0] > 1 else float("nan")
    tp = teacher_probs.detach().float()
    return {
        "cls_std": std,
        "cls_effective_rank": effective_rank(z) if z.shape[0] > 1 else float("nan"),
        "teacher_entropy": float(entropy(tp).mean()),
        "teacher_batch_entropy": float(entropy(tp.mean(0, keepdim=True))[0]),
        "teacher_max_entropy": math.log(tp.shape[-1]),
    }


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows: ~0 for spread directions, 1 when
    every row points the same way. O(n d): the pairs are summed through the squared row sum."""
    z = F.normalize(rows.detach().float(), dim=-1)
    n = z.shape[0]
    if n < 2:
        return float("nan")
    s = z.sum(0)
    return float(((s @ s) - (z * z).sum()) / (n * (n - 1)))


def unit_row_sum(weight: torch.Tensor) -> torch.Tensor:
    """Sum of the L2-normalised rows: with the row count, what `prototype_cosine` needs, and
    additive over row shards (so FSDP ranks can all-reduce it instead of gathering the matrix)."""
    return F.normalize(weight.detach().float(), dim=-1).sum(0)


def prototype_cosine(row_sum: torch.Tensor, n_rows: int) -> float:
    """Mean pairwise cosine of `n_rows` unit vectors whose sum is `row_sum`."""
    if n_rows < 2:
        return float("nan")
    return float(((row_sum @ row_sum) - n_rows) / (n_rows * (n_rows - 1)))


def head_collapse_stats(bottleneck: torch.Tensor, prototype_row_sum: torch.Tensor, n_prototypes: int) -> dict:
    """Indicators of a collapsed DINO head, which the CLS indicators do not see: the backbone's CLS
    can vary across images while the head maps them all to one bottleneck point (then every
    centred teacher target is uniform and the DINO terms teach nothing), or while every prototype
    points the same way (then the logits are equal whatever the input).

    - `head_bottleneck_cos`: mean pairwise cosine of the (teacher's) bottleneck vectors of a batch.
    - `prototype_cos`: mean pairwise cosine of the prototypes (rows of the last layer).
    """
    return {
        "head_bottleneck_cos": mean_pairwise_cosine(bottleneck),
        "prototype_cos": prototype_cosine(prototype_row_sum, n_prototypes),
    }


def collapse_warnings(stats: dict[str, float], step: int, until: int | None = None) -> list[str]:
    """Human advice when the indicators look like a collapse (empty when healthy). `stats` are one
    step's indicators, or (with `until`) their means over the logged steps `step`..`until`."""
    where = f"step {step}" if until is None else f"steps {step}-{until}"
    out = []
    if stats.get("cls_std", 1.0) < 0.05:
        out.append(
            f"{where}: CLS features have almost no spread (cls_std={stats['cls_std']:.3g}, "
            f"effective rank {stats.get('cls_effective_rank', float('nan')):.2f}): the representation is "
            "collapsing. Lower optim.lr, lengthen optim.warmup_steps, keep ssl.koleo_loss_weight > 0, and "
            "check that the data are not near-identical images"
        )
    if stats.get("teacher_batch_entropy", 1.0) < 0.05 * stats.get("teacher_max_entropy", 1.0) and \
            stats.get("teacher_batch_entropy", 1.0) < math.log(2):
        out.append(
            f"{where}: the teacher assigns every image to the same prototype "
            f"(batch entropy {stats['teacher_batch_entropy']:.3g} nats): use ssl.centering=sinkhorn_knopp, "
            "raise ssl.warmup_teacher_temp_steps or lower ssl.teacher_temp"
        )
    if stats.get("head_bottleneck_cos", 0.0) > 0.98:
        out.append(
            f"{where}: the DINO head maps every image to nearly the same bottleneck vector "
            f"(mean pairwise cosine {stats['head_bottleneck_cos']:.4f}): the teacher's targets carry no "
            "information about the image, and the DINO loss keeps it that way. From scratch with DINOv2's "
            "LayerScale init (1e-5) the CLS token does not depend on the image at the first step: start "
            "from pretrained weights (model.pretrained) or, for a small run, raise model.layerscale_init "
            "(0.1 in configs/pretrain/laptop_real.yaml)"
        )
    if stats.get("prototype_cos", 0.0) > 0.9:
        out.append(
            f"{where}: the DINO head's prototypes all point the same way (mean pairwise cosine "
            f"{stats['prototype_cos']:.4f}): every logit is equal whatever the input. Restart with a longer "
            "optim.freeze_last_layer_steps and a lower optim.lr"
        )
    max_h = stats.get("teacher_max_entropy", 0.0)
    if max_h > 0 and stats.get("teacher_entropy", 0.0) > 0.995 * max_h:
        out.append(
            f"{where}: the teacher's targets are uniform (entropy {stats['teacher_entropy']:.4f} of "
            f"ln K = {max_h:.4f}): the DINO and iBOT terms sit at their trivial value. See the head "
            "indicators (head_bottleneck_cos, prototype_cos) in metrics.jsonl"
        )
    return out


def window_means(history: list[dict]) -> dict[str, float]:
    """Per indicator, the mean of its finite values over `history` (absent where none is finite)."""
    out = {}
    for key in {k for h in history for k in h}:
        vals = [float(h[key]) for h in history if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


class CollapseWatch:
    """Judges the collapse indicators over the last `window` logged steps, never over one step: a
    small batch is sometimes a few near-identical images, whose bottleneck vectors and targets
    agree for that step alone (seen in CI: one step of a healthy batch-4 run at bottleneck cosine
    0.98). A collapse persists, so the window's means see it; a warning of one kind is repeated at
    most every `repeat_every` logs."""

    def __init__(self, window: int = 5, min_logs: int = 3, repeat_every: int = 10):
        if not 1 <= min_logs <= window:
            raise ValueError(f"CollapseWatch: need 1 <= min_logs ({min_logs}) <= window ({window})")
        self._history: deque[tuple[int, dict]] = deque(maxlen=window)
        self._min_logs, self._repeat_every = min_logs, repeat_every
        self._n_logs = 0
        self._last_warned: dict[str, int] = {}

    def observe(self, stats: dict[str, float], step: int) -> list[str]:
        """Add one logged step's indicators; the warnings to print now."""
        self._history.append((step, stats))
        self._n_logs += 1
        if len(self._history) < self._min_logs:
            return []
        first = self._history[0][0]
        means = window_means([s for _, s in self._history])
        out = []
        for w in collapse_warnings(means, first, step):
            kind = w.split(":", 1)[1][:40]
            last = self._last_warned.get(kind)
            if last is None or self._n_logs - last >= self._repeat_every:
                self._last_warned[kind] = self._n_logs
                out.append(w)
        return out


def vit_flops_per_image(embed_dim: int, depth: int, tokens: int, mlp_hidden: int) -> float:
    """Forward FLOPs of one image through a ViT (matmuls only, 2 FLOPs per multiply-add)."""
    per_block = 2 * tokens * (4 * embed_dim * embed_dim + 2 * embed_dim * mlp_hidden) + 4 * tokens * tokens * embed_dim
    return float(depth * per_block)


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of the GPU, if it is one we know."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, v in _PEAK_BF16.items():
        if key in name:
            return v
    return None


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class MetricsLog:
    """Append-only metrics.jsonl (one JSON object per logged step) and TensorBoard if present."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = metrics_path(output_dir)
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:  # optional: only when the tensorboard package is installed
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(output_dir) / "tb"))
            except Exception:
                self._tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
