"""What a run reports: metrics.jsonl (+ TensorBoard when installed), collapse indicators, MFU.

The indicator functions are pure (tensors in, floats out); `MetricsLog` only writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CollapseThresholds:
    """When an indicator (its mean over a window of logged steps) alerts. Calibrated on real images
    (README "Collapse indicators"): healthy runs of tiny_cpu.yaml, laptop_real.yaml and the demo's
    recipe stay clear of every line (the closest: tiny_cpu.yaml on brain MRI, head cosine 0.990 and
    targets 0.007 nats from uniform), a from-scratch run at DINOv2's LayerScale 1e-5 crosses the
    head and target lines from its first window on (>= 0.998 and <= 0.003 nats)."""

    cls_std_below: float = 0.05  # CLS features of all images nearly one point
    one_prototype_below: float = 0.05  # batch entropy under this fraction of ln K (and < ln 2)
    head_bottleneck_cos_above: float = 0.995  # every image at one point of the DINO head
    prototype_cos_above: float = 0.9  # every prototype pointing one way
    # ln K - teacher entropy = the targets' mean KL divergence from uniform, in nats, whatever K is:
    # how much a target says about its image
    target_nats_below: float = 0.005


THRESHOLDS = CollapseThresholds()


def collapse_findings(stats: dict[str, float], th: CollapseThresholds = THRESHOLDS) -> list[tuple[str, str]]:
    """(kind, what is wrong) for each indicator past its line; empty when healthy. `stats`: one
    step's indicators or their means over a window."""
    out = []
    if stats.get("cls_std", 1.0) < th.cls_std_below:
        out.append(("cls", f"CLS features have almost no spread (cls_std {stats['cls_std']:.3g} < {th.cls_std_below:g}, "
                           f"effective rank {stats.get('cls_effective_rank', float('nan')):.2f})"))
    batch_h, max_h = stats.get("teacher_batch_entropy", 1.0), stats.get("teacher_max_entropy", 0.0)
    if batch_h < th.one_prototype_below * max(max_h, 1.0) and batch_h < math.log(2):
        out.append(("one_prototype", f"the teacher assigns every image to the same prototype (batch entropy "
                                     f"{batch_h:.3g} nats)"))
    if stats.get("head_bottleneck_cos", 0.0) > th.head_bottleneck_cos_above:
        out.append(("head", "the DINO head maps every image to nearly the same bottleneck vector (mean pairwise "
                            f"cosine {stats['head_bottleneck_cos']:.4f} > {th.head_bottleneck_cos_above:g})"))
    if stats.get("prototype_cos", 0.0) > th.prototype_cos_above:
        out.append(("prototypes", "the DINO head's prototypes all point the same way (mean pairwise cosine "
                                  f"{stats['prototype_cos']:.4f} > {th.prototype_cos_above:g})"))
    if max_h > 0 and "teacher_entropy" in stats and max_h - stats["teacher_entropy"] < th.target_nats_below:
        out.append(("uniform", f"the teacher's targets are uniform (entropy {stats['teacher_entropy']:.4f} of "
                               f"ln K = {max_h:.4f}: {max_h - stats['teacher_entropy']:.4f} nats from uniform < "
                               f"{th.target_nats_below:g}), so the DINO and iBOT terms sit at their trivial value"))
    return out


def _get(cfg, key: str):
    """`cfg.a.b` or None (no config, or a config without that key)."""
    for part in key.split("."):
        cfg = getattr(cfg, part, None) if cfg is not None else None
    return cfg


def collapse_advice(kinds: list[str], cfg=None) -> str:
    """What to change for these findings, leaving out what the run's config (`cfg`, the full run
    config) already does; without a config, every usual remedy."""
    def now(key: str) -> str:
        return f" (now {_get(cfg, key)})" if _get(cfg, key) is not None else ""

    tips: list[str] = []
    if {"head", "uniform"} & set(kinds):
        if cfg is None or not _get(cfg, "model.pretrained"):
            tips.append("start from pretrained weights (model.pretrained)")
        ls = _get(cfg, "model.layerscale_init")
        if ls is None or float(ls) < 0.1:
            tips.append(f"raise model.layerscale_init{now('model.layerscale_init')} to 0.1 (at DINOv2's 1e-5 a "
                        "from-scratch CLS token does not depend on the image at the first step)")
    if {"cls", "head", "uniform"} & set(kinds):
        tips.append(f"lower optim.lr{now('optim.lr')} or lengthen optim.warmup_steps{now('optim.warmup_steps')}")
        if _get(cfg, "ssl.koleo_loss_weight") is not None and float(_get(cfg, "ssl.koleo_loss_weight")) <= 0:
            tips.append("set ssl.koleo_loss_weight > 0 (now 0)")
    if "one_prototype" in kinds:
        if _get(cfg, "ssl.centering") != "sinkhorn_knopp":
            tips.append(f"use ssl.centering=sinkhorn_knopp{now('ssl.centering')}")
        tips.append(f"raise ssl.warmup_teacher_temp_steps{now('ssl.warmup_teacher_temp_steps')} or lower "
                    f"ssl.teacher_temp{now('ssl.teacher_temp')}")
    if "prototypes" in kinds:
        tips.append(f"restart with a longer optim.freeze_last_layer_steps{now('optim.freeze_last_layer_steps')}")
    if "cls" in kinds:
        tips.append("check that the data are not near-identical images (dinotrain data preview)")
    return "; ".join(dict.fromkeys(tips))


def collapse_warning(stats: dict[str, float], first: int, last: int, cfg=None,
                     th: CollapseThresholds = THRESHOLDS) -> str | None:
    """One line for the indicators' means over logged steps `first`..`last`: what is wrong and
    what to change (None when healthy)."""
    found = collapse_findings(stats, th)
    if not found:
        return None
    where = f"step {first}" if first == last else f"steps {first}-{last}"
    advice = collapse_advice([k for k, _ in found], cfg)
    return f"collapse warning, {where}: " + "; ".join(t for _, t in found) + (f". Try: {advice}" if advice else "")


def window_means(history: list[dict]) -> dict[str, float]:
    """Per indicator, the mean of its finite values over `history` (absent where none is finite)."""
    out = {}
    for key in {k for h in history for k in h}:
        vals = [float(h[key]) for h in history if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


class CollapseWatch:
    """Judges the collapse indicators over windows of `window` logged steps (one after the other),
    never over one step: a small batch is sometimes a few near-identical images, whose bottleneck
    vectors and targets agree for that step alone (seen in CI: one step of a healthy batch-4 run at
    bottleneck cosine 0.98). A collapse persists, so the window's means see it. At most one warning
    per window; the same findings again only after `repeat_every` windows; `summary()` counts them.
    `cfg`: the run's config, so that the advice leaves out what it already does."""

    def __init__(self, window: int = 5, min_logs: int = 3, repeat_every: int = 10, cfg=None,
                 thresholds: CollapseThresholds = THRESHOLDS):
        if not 1 <= min_logs <= window:
            raise ValueError(f"CollapseWatch: need 1 <= min_logs ({min_logs}) <= window ({window})")
        self._block: list[tuple[int, dict]] = []
        self._window, self._min_logs, self._repeat_every = window, min_logs, repeat_every
        self._cfg, self._th = cfg, thresholds
        self.windows = 0  # windows judged
        self.alerts: dict[str, int] = {}  # windows that alerted, per kind
        self.alerting_windows = 0
        self.printed = 0
        self._last_printed: dict[frozenset, int] = {}

    def observe(self, stats: dict[str, float], step: int) -> list[str]:
        """Add one logged step's indicators; the warning to print now (at most one)."""
        self._block.append((step, stats))
        if len(self._block) < self._window:
            return []
        return self._judge()

    def finish(self) -> list[str]:
        """Judge the last, partial window (when it holds at least `min_logs` steps)."""
        return self._judge() if len(self._block) >= self._min_logs else []

    def _judge(self) -> list[str]:
        block, self._block = self._block, []
        self.windows += 1
        means = window_means([s for _, s in block])
        found = collapse_findings(means, self._th)
        if not found:
            return []
        self.alerting_windows += 1
        kinds = frozenset(k for k, _ in found)
        for k in kinds:
            self.alerts[k] = self.alerts.get(k, 0) + 1
        last = self._last_printed.get(kinds)
        if last is not None and self.windows - last < self._repeat_every:
            return []
        self._last_printed[kinds] = self.windows
        self.printed += 1
        return [collapse_warning(means, block[0][0], block[-1][0], self._cfg, self._th)]

    def summary(self) -> str:
        """One line for the end of training."""
        n = f"{self.windows} window(s) of up to {self._window} logged steps"
        if not self.alerting_windows:
            return f"collapse monitor: no warning ({n} judged after the lr warm-up)"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.alerts.items()))
        return (f"collapse monitor: {self.alerting_windows} of {n} alerted ({kinds}); {self.printed} warning(s) "
                "printed; indicators per step in metrics.jsonl")


def judge_metrics(rows: list[dict], warmup_steps: int, cfg=None) -> CollapseWatch:
    """The trainer's judgement replayed over a run's metrics.jsonl rows (the logged steps after the
    lr warm-up, as the trainer judges them): for a run whose own log is elsewhere (a job's)."""
    watch = CollapseWatch(cfg=cfg)
    for r in rows:
        if int(r.get("step", 0)) > warmup_steps:
            watch.observe(r, int(r["step"]))
    watch.finish()
    return watch


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
