"""The training loop as an object: `Trainer(cfg, env).train()`.

After torchtitan's trainer: `train()` resumes and runs the steps, `train_step()` is one step
(schedules, `forward_backward`, clip, AdamW, EMA, centres, metrics, saves) and
`forward_backward()` is the forward of both networks, the losses and the backward (as dinov3's
`SSLMetaArch.forward_backward`). What must survive a restart is the `TrainState`; when to log,
export is the `SavePolicy`; everything about checkpoints (cadence, keep-k, manifests, the
preemption save, fallback on load, the run-folder lock) is the `CheckpointManager`'s, with which
the trainer registers its states once; fp16 scaling is the state's `LossScaler`.

The heads' last layer is "frozen" as DINOv2 freezes it: lr 0 for `optim.freeze_last_layer_steps`,
while its gradient still counts in the clipping norm and its AdamW moments accumulate.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dinotrain.train.ckpt_manager import CheckpointManager
from dinotrain.train.distributed import DistEnv, all_reduce_mean, all_reduce_sum
from dinotrain.train.export import export_teacher
from dinotrain.train.meta_arch import (
    LossTerms,
    SSLNetwork,
    TeacherTargets,
    compute_losses,
    ema_update,
    teacher_targets,
)
from dinotrain.train.monitor import (
    CollapseWatch,
    MetricsLog,
    collapse_stats,
    head_collapse_stats,
    mean_pairwise_cosine,
    peak_flops,
    peak_memory_gb,
    unit_row_sum,
    vit_flops_per_image,
)
from dinotrain.train.networks import build_networks
from dinotrain.train.optim import apply_step_values, build_optimizer
from dinotrain.train.parallel import param_dtype
from dinotrain.train.policy import SavePolicy
from dinotrain.train.schedules import Schedules, StepValues
from dinotrain.train.state import TrainState

if TYPE_CHECKING:
    from dinotrain.data.loader import Batch

log = logging.getLogger("dinotrain.train")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf more often than `train.max_nonfinite_steps` allows."""


@dataclass
class StepOutput:
    """What `forward_backward` hands to the rest of the step."""

    losses: dict[str, float]  # mean over ranks, for the log
    student_out: dict[str, torch.Tensor]
    teacher: TeacherTargets
    teacher_temp: float  # the step's scheduled value


def flops_per_step(data, student: SSLNetwork) -> float:
    """Model FLOPs of one step of this rank (`data`: the config's data section): student
    forward+backward on all crops (3x), teacher forward on the global crops (1x)."""
    bb = student.backbone
    dim, depth, p = bb.embed_dim, bb.n_blocks, bb.patch_size
    hidden = int(dim * bb.mlp_ratio)
    extra = 1 + bb.num_register_tokens
    tg = (data.global_crops_size // p) ** 2 + extra
    tl = (data.local_crops_size // p) ** 2 + extra
    g = vit_flops_per_image(dim, depth, tg, hidden) * data.global_crops_number
    loc = vit_flops_per_image(dim, depth, tl, hidden) * data.local_crops_number
    return float(data.batch_size_per_gpu * (3 * (g + loc) + g))


class PhaseTimer:
    """Phase timings; on GPU it synchronises at phase ends of the steps that are logged."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sync = False
        self.t = time.perf_counter()
        self.phases: dict[str, float] = {}

    def start(self, sync: bool) -> None:
        self.sync = sync and self.device.type == "cuda"
        self.phases = {}
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sync:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.t
        self.t = now


def clip_grad_norms(student: SSLNetwork, clip: float) -> dict[str, float]:
    """Clip each part separately (DINOv2 does) and return the norms before clipping."""
    norms = {}
    for name in ("backbone", "dino_head", "ibot_head"):
        part = getattr(student, name)
        params = [p for p in part.parameters() if p.grad is not None] if part is not None else []
        if not params:
            continue
        n = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if hasattr(n, "full_tensor"):
            n = n.full_tensor()
        norms[f"grad_norm_{name}"] = float(n)
    return norms


def prototype_row_sum(net: SSLNetwork) -> torch.Tensor:
    """Sum of the unit-normalised prototypes over every rank's rows (FSDP shards them by row).
    A collective when sharded: every rank calls it at the same steps."""
    w = net.dino_head.last_layer.weight_v
    sharded = hasattr(w, "to_local")
    s = unit_row_sum(w.to_local() if sharded else w)
    if sharded and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(s)
    return s


def _say(msg: str, bar, level: int) -> None:
    """A message on its own line: above the progress bar (tqdm redraws it below) when there is one."""
    if bar is not None:
        bar.write(f"{logging.getLevelName(level).lower()}: {msg}", file=sys.stderr)
    else:
        log.log(level, msg)


class Trainer:
    """One run's networks, optimiser, loader and state, and the loop over them."""

    def __init__(self, cfg, env: DistEnv, ckpt: CheckpointManager | None = None):
        from dinotrain.data import build_train_loader

        self.cfg, self.env, self.device = cfg, env, env.device
        self.out = Path(cfg.output_dir)
        self.t_start = time.time()
        self.policy = SavePolicy.from_config(cfg.train)
        self.loader = build_train_loader(cfg, env.rank, env.world_size)
        self.student, self.teacher = build_networks(cfg.model, cfg.ssl, cfg.parallel, cfg.train.seed, self.device,
                                                    env.world_size)
        self.optimizer = build_optimizer(self.student, cfg.optim, num_layers=self.student.backbone.n_blocks)
        self.schedules = Schedules.from_config(cfg.optim, cfg.ssl, cfg.train,
                                               int(cfg.data.batch_size_per_gpu) * env.world_size)
        mp_dtype = param_dtype(cfg.parallel.mixed_precision, self.device)
        # without FSDP the MixedPrecisionPolicy is absent: autocast gives the same compute dtype
        self.autocast = (torch.autocast(self.device.type, dtype=mp_dtype)
                         if not cfg.parallel.fsdp and mp_dtype != torch.float32 else None)
        self.state = TrainState.create(int(cfg.ssl.head_n_prototypes), self.device, mp_dtype == torch.float16,
                                       self.loader)
        self.ckpt = ckpt or CheckpointManager.from_config(cfg, env)
        self.ckpt.register(self.student, self.teacher, self.optimizer, self.state)
        # different drop-path draws on different ranks, reproducible from the seed
        torch.manual_seed(int(cfg.train.seed) * 1000 + env.rank + 1)
        self.timer = PhaseTimer(self.device)
        self.flops, self.peak = flops_per_step(cfg.data, self.student), peak_flops(self.device)
        self.metrics: MetricsLog | None = None
        self.last_export: Path | None = None
        self.last_losses: dict[str, float] = {}
        self._images, self._t_window = 0, time.perf_counter()
        self.collapse_watch = CollapseWatch(cfg=cfg)  # the config: advice leaves out what it already does

    # ------------------------------------------------------------------------- the run
    @property
    def last_ckpt(self) -> Path | None:
        return self.ckpt.last

    @property
    def resumed_from(self) -> Path | None:
        return self.ckpt.resumed_from

    def resume(self) -> int:
        """Clean up, install the stop signals, restore the newest complete checkpoint (when
        `train.resume`): the step to start from."""
        return self.ckpt.start()

    def train(self) -> dict:
        """Resume, run the remaining steps, return a summary dict."""
        from dinotrain.atomic import keep_jsonl_until
        from dinotrain.run_layout import metrics_path

        start = self.resume()
        if self.env.is_main:
            keep_jsonl_until(metrics_path(self.out), start)  # those steps are about to run again
        self.metrics = MetricsLog(self.out, enabled=self.env.is_main)
        bar = self._progress_bar(start)
        try:
            for step in range(start, self.policy.max_steps):
                self.train_step(step, first=step == start, bar=bar)
            if self.env.is_main and start < self.policy.max_steps:
                for w in self.collapse_watch.finish():
                    _say(w, bar, logging.WARNING)
                _say(self.collapse_watch.summary(), bar, logging.INFO)
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
            if hasattr(self.loader, "close"):
                self.loader.close()
            self.ckpt.close()
        return self._summary(start)

    def _progress_bar(self, start: int):
        if not (self.env.is_main and self.cfg.train.progress and start < self.policy.max_steps):
            return None
        from tqdm import tqdm

        return tqdm(total=self.policy.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def _summary(self, start: int) -> dict:
        return {
            "output_dir": str(self.out),
            "start_step": start,
            "final_step": max(start, self.policy.max_steps),
            "resumed_from": start if self.resumed_from is not None else None,
            "losses": self.last_losses,
            "nonfinite_steps": self.state.nonfinite,
            "skipped_samples": self._skipped_samples(),
            "checkpoint": str(self.last_ckpt) if self.last_ckpt else None,
            "export": str(self.last_export) if self.last_export else None,
            "world_size": self.env.world_size,
            "wall_s": time.time() - self.t_start,
        }

    # ------------------------------------------------------------------------- one step
    def train_step(self, step: int, first: bool = False, bar=None) -> None:
        """Optimisation step `step` (0-based): schedules, forward_backward, update, log, save."""
        n = step + 1  # steps completed after this one: the number that is logged and saved
        log_now = self.policy.log_now(n, first)
        self.timer.start(sync=log_now)
        # every tensor of the batch goes to the device; its lists and arrays (keys, aug_params) stay
        batch: Batch = {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                        for k, v in next(self.loader).items()}
        self.timer.lap("data")
        values = self.schedules.at(step)
        apply_step_values(self.optimizer, values)
        out = self.forward_backward(batch, values.teacher_temp, n)
        if out is not None:  # None: a skipped step (non-finite loss or fp16 overflow)
            gnorms = self._update(values, out)
            self._images += batch["global_crops"].shape[0] // int(self.cfg.data.global_crops_number) \
                * self.env.world_size
            self.last_losses = out.losses
            if log_now:
                self._log(n, step, out, values, gnorms, bar)
            if bar is not None:
                bar.update(1)
        self._save(n)

    def _forward(self, batch: Batch) -> tuple[dict, TeacherTargets]:
        g = batch["global_crops"]
        idx = batch["mask_indices_list"].long()
        with self.autocast if self.autocast is not None else contextlib.nullcontext():
            with torch.no_grad():
                t_out = self.teacher(g, None, None, idx)
            s_out = self.student(g, batch["local_crops"], batch["masks"], idx)
        n_masked_total = all_reduce_sum(batch["n_masked_patches"].sum().to(device=self.device, dtype=torch.float32))
        teacher = TeacherTargets.from_teacher(t_out, n_masked_total=n_masked_total,
                                              dino_center=self.state.dino_center, ibot_center=self.state.ibot_center)
        return s_out, teacher

    def forward_backward(self, batch: Batch, teacher_temp: float, n: int) -> StepOutput | None:
        """Teacher and student forward, losses, backward (fp16: scaled, unscaled, checked).
        None when the step must be skipped; raises NonFiniteLossError past the tolerance."""
        s_out, teacher = self._forward(batch)
        losses = compute_losses(s_out, teacher, batch, self.cfg.ssl, int(self.cfg.data.global_crops_number),
                                teacher_temp)
        self.timer.lap("forward")
        # one small all-reduce per step: loss means for the log and a common NaN verdict
        mean = dict(zip(LossTerms.names(), all_reduce_mean(losses.stacked()).tolist()))
        if not self._losses_finite(mean, n):
            return None
        scaler = self.state.scaler
        scaler.scale_loss(losses.total_loss).backward()
        finite = scaler.unscale_(self.student)
        scaler.update(finite)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: fp16 gradient overflow, loss scale -> %g", n, float(scaler.scale))
            return None
        self.timer.lap("backward")
        return StepOutput(mean, s_out, teacher, teacher_temp)

    def _losses_finite(self, mean: dict[str, float], n: int) -> bool:
        bad = [k for k, v in mean.items() if not math.isfinite(v)]
        if not bad:
            return True
        self.state.nonfinite += 1
        self.optimizer.zero_grad(set_to_none=True)
        limit = int(self.cfg.train.max_nonfinite_steps)
        bad_terms = [k for k in bad if k != "total_loss"] or bad
        msg = (f"step {n}: loss term '{bad_terms[0]}' is not finite ({', '.join(bad)}); "
               f"{self.state.nonfinite} non-finite step(s) so far, train.max_nonfinite_steps={limit}")
        if self.state.nonfinite > limit:
            keep = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"{msg}; stopping ({keep}). Lower optim.lr or raise optim.warmup_steps, "
                "check the data (dinotrain data preview), or use parallel.mixed_precision=bf16 instead of fp16")
        log.warning("%s: skipping the update", msg)
        return False

    def _update(self, values: StepValues, out: StepOutput) -> dict[str, float]:
        """Clip, AdamW, EMA, centres. The last layer's lr is 0 while frozen (the schedules)."""
        gnorms = clip_grad_norms(self.student, float(self.cfg.optim.clip_grad))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.teacher, self.student, values.momentum)
        if self.cfg.ssl.centering == "softmax_center":
            from dinotrain.losses import update_center, update_center_mean_of_ranks

            m = float(self.cfg.ssl.center_momentum)
            t = out.teacher
            self.state.dino_center = update_center(self.state.dino_center, t.cls_logits, m)
            self.state.ibot_center = update_center_mean_of_ranks(self.state.ibot_center, t.masked_patch_logits, m)
        self.timer.lap("optimizer")
        return gnorms

    # ------------------------------------------------------------------------- reporting, saving
    def _monitor(self, n: int, step: int, student_out: dict, teacher: TeacherTargets, teacher_temp: float,
                 bar=None) -> dict:
        """Collapse indicators of this step, and rate-limited warnings when they look bad.
        Called on every rank at log steps (the prototype sum is a collective under FSDP)."""
        with torch.no_grad():
            cls_t, _ = teacher_targets(teacher, self.cfg.ssl, teacher_temp)
            stats = collapse_stats(student_out["global_cls"], cls_t)
            k = int(self.cfg.ssl.head_n_prototypes)
            stats.update(head_collapse_stats(teacher.global_cls_bottleneck, prototype_row_sum(self.teacher), k))
            stats["student_head_bottleneck_cos"] = mean_pairwise_cosine(student_out["global_cls_bottleneck"])
        # at DINOv2's init (LayerScale 1e-5) every image has nearly the same CLS: judge collapse
        # only after the warm-up, on the means of windows of logged steps (CollapseWatch)
        if self.env.is_main and step >= self.schedules.warmup_steps:
            for w in self.collapse_watch.observe(stats, n):
                _say(w, bar, logging.WARNING)
        return stats

    def _log(self, n: int, step: int, out: StepOutput, values: StepValues, gnorms: dict, bar) -> None:
        now = time.perf_counter()
        elapsed = max(now - self._t_window, 1e-9)
        step_time = sum(self.timer.phases.values())
        stats = self._monitor(n, step, out.student_out, out.teacher, out.teacher_temp, bar)
        record = {"step": n, **out.losses, **values.as_dict(), **gnorms, **stats,
                  "images_per_s": self._images / elapsed, "step_time_s": step_time,
                  **{f"time_{k}_s": v for k, v in self.timer.phases.items()},
                  "peak_memory_gb": peak_memory_gb(self.device), "nonfinite_steps": self.state.nonfinite,
                  "skipped_samples": self._skipped_samples(), "world_size": self.env.world_size}
        if self.peak:
            record["mfu"] = self.flops / max(step_time, 1e-9) / self.peak
        if hasattr(self.loader, "stats"):
            for s in self.loader.stats().get("sources", []):
                record[f"epochs/{s['name']}"] = s["epochs_seen"]
        self.metrics.write(record)
        self._images, self._t_window = 0, now
        if bar is not None:
            bar.set_postfix(loss=f"{out.losses['total_loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")

    def _skipped_samples(self) -> int:
        """Corrupt samples the loaders skipped since the run began (resumes included), summed over
        ranks: a collective, called by every rank at the same steps (log steps, the end)."""
        n = self.loader.stats().get("skipped_corrupt", 0) if hasattr(self.loader, "stats") else 0
        return int(all_reduce_sum(torch.tensor([float(n)], device=self.device)).item())

    def _save(self, n: int) -> None:
        """Checkpoint and export on schedule (also after a skipped step: the state is still good),
        then stop here, with a checkpoint of this step, when a stop signal came."""
        self.state.step = n
        self.ckpt.save_if_due(n)
        if self.policy.export_now(n):
            self.last_export = export_teacher(self.teacher, self.cfg.model, self.cfg.ssl, self.out, n, self.env,
                                             data=self.cfg.data)
        self.ckpt.stop_if_requested(n)
