"""What a run reports: metrics.jsonl (+ TensorBoard when installed), collapse indicators, MFU.

The indicator functions are pure (tensors in, floats out); `MetricsLog` only writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

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


def collapse_warnings(stats: dict[str, float], step: int) -> list[str]:
    """Human advice when the indicators look like a collapse (empty when healthy)."""
    out = []
    if stats.get("cls_std", 1.0) < 0.05:
        out.append(
            f"step {step}: CLS features have almost no spread (cls_std={stats['cls_std']:.3g}, "
            f"effective rank {stats.get('cls_effective_rank', float('nan')):.2f}): the representation is "
            "collapsing. Lower optim.lr, lengthen optim.warmup_steps, keep ssl.koleo_loss_weight > 0, and "
            "check that the data are not near-identical images"
        )
    if stats.get("teacher_batch_entropy", 1.0) < 0.05 * stats.get("teacher_max_entropy", 1.0) and \
            stats.get("teacher_batch_entropy", 1.0) < math.log(2):
        out.append(
            f"step {step}: the teacher assigns every image to the same prototype "
            f"(batch entropy {stats['teacher_batch_entropy']:.3g} nats): use ssl.centering=sinkhorn_knopp, "
            "raise ssl.warmup_teacher_temp_steps or lower ssl.teacher_temp"
        )
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
        self.path = Path(output_dir) / "metrics.jsonl"
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
