"""`run(cfg)`: the one training entry of every mode (local, torchrun, SLURM task).

Order of a run: process group -> config saved -> loader -> student/teacher on the meta device
-> FSDP2 -> materialise + init (or pretrained weights) -> optimiser -> resume from the newest
complete checkpoint -> steps (teacher forward, student forward, losses, backward, clip,
AdamW, EMA) with metrics, checkpoints and teacher exports -> a summary dict.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dinotrain.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dinotrain.train.distributed import DistEnv, all_reduce_mean, barrier, init_distributed
from dinotrain.train.meta_arch import LossParams, SSLNetwork, compute_losses, ema_update, teacher_targets
from dinotrain.train.monitor import (
    MetricsLog,
    collapse_stats,
    collapse_warnings,
    head_collapse_stats,
    mean_pairwise_cosine,
    peak_flops,
    peak_memory_gb,
    unit_row_sum,
    vit_flops_per_image,
)
from dinotrain.train.optim import apply_step_values, build_optimizer
from dinotrain.train.parallel import parallelize, param_dtype
from dinotrain.train.preflight import preflight
from dinotrain.train.schedules import Schedules

log = logging.getLogger("dinotrain.train")

LOSS_KEYS = ("total_loss", "dino_global_crops_loss", "dino_local_crops_loss", "ibot_loss", "koleo_loss")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf more often than `train.max_nonfinite_steps` allows."""


def _as_config(cfg: Any) -> DictConfig:
    from dinotrain.config import schema, validate

    if isinstance(cfg, DictConfig):
        return cfg
    merged = OmegaConf.merge(schema(), OmegaConf.create(cfg) if isinstance(cfg, dict) else OmegaConf.structured(cfg))
    validate(merged)
    return merged


# ----------------------------------------------------------------------------- networks
def build_networks(cfg, device: torch.device, world_size: int) -> tuple[SSLNetwork, SSLNetwork]:
    """Student and teacher: created on the meta device, sharded, materialised, initialised; the
    teacher starts as an exact copy of the student (pretrained weights included)."""
    from dinotrain.models import build_backbone, build_head

    def make(drop_path: float) -> SSLNetwork:
        backbone = build_backbone(cfg.model, device="meta", drop_path_rate=drop_path)
        dim = backbone.embed_dim
        head = build_head(dim, cfg.ssl, device="meta")
        ibot = build_head(dim, cfg.ssl, device="meta") if cfg.ssl.ibot_separate_head else None
        return SSLNetwork(backbone, head, ibot)

    student = parallelize(make(float(cfg.model.drop_path_rate)), cfg, device, world_size, trainable=True)
    teacher = parallelize(make(0.0), cfg, device, world_size, trainable=False)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with torch.random.fork_rng(devices=[]):
        # on CPU, DTensor random ops draw per shard from the local generator: offset by rank so
        # the shards of one parameter are not copies of each other
        torch.manual_seed(int(cfg.train.seed) * 7919 + rank)
        student.to_empty(device=device)
        _init(student)
    teacher.to_empty(device=device)
    load_pretrained(student, cfg)
    with torch.no_grad():
        for tp, sp in zip(teacher.parameters(), student.parameters()):
            tp.copy_(sp)
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            tb.copy_(sb)
    teacher.requires_grad_(False)
    teacher.eval()
    student.train()
    return student, teacher


def _init(net: SSLNetwork) -> None:
    from dinotrain.models import init_weights

    init_weights(net.backbone)
    net.dino_head.init_weights()
    if net.ibot_head is not None:
        net.ibot_head.init_weights()


def load_pretrained(student: SSLNetwork, cfg) -> None:
    """`model.pretrained` (DINOv2 file or HF folder) and `model.pretrained_head` into the student."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full: dict[str, torch.Tensor] = {}
    if cfg.model.pretrained or cfg.model.pretrained_head:
        from dinotrain.models import build_backbone, build_head, convert
    if cfg.model.pretrained:
        src = Path(cfg.model.pretrained)
        if not src.exists():
            raise FileNotFoundError(f"model.pretrained={src} does not exist: give a DINOv2 .pth/.safetensors or a HF folder")
        # loaded into a model of this config: position embeddings resampled, 3->1 channel kernels summed
        backbone = convert.load_backbone(src, model=build_backbone(cfg.model, device="cpu"))
        full.update({f"backbone.{k}": v for k, v in backbone.state_dict().items()})
    if cfg.model.pretrained_head:
        src = Path(cfg.model.pretrained_head)
        if not src.exists():
            raise FileNotFoundError(f"model.pretrained_head={src} does not exist: give a dino_head.safetensors")
        head = build_head(student.backbone.embed_dim, cfg.ssl, device="cpu")
        try:
            head = convert.load_dino_head(src, head=head)
        except RuntimeError as e:
            raise ValueError(f"model.pretrained_head={src} does not fit ssl.head_* sizes: {str(e).splitlines()[0]}") from e
        full.update({f"dino_head.{k}": v for k, v in head.state_dict().items()})
    if not full:
        return
    set_model_state_dict(student, full, options=StateDictOptions(full_state_dict=True, strict=False))


# ----------------------------------------------------------------------------- export
def export_teacher(teacher: SSLNetwork, cfg, step: int, env: DistEnv) -> Path | None:
    """`export/step_NNNNNNN/{hf/, dinov2.safetensors, dino_head.safetensors}`, mirrored to
    `export/latest/`. Every rank takes part (gathering the shards); rank 0 writes."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(teacher, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    root = Path(cfg.output_dir) / "export"
    final = root / f"step_{step:07d}"
    if env.is_main:
        from dinotrain.models import build_backbone, build_head
        from dinotrain.models.convert import to_dinov2, to_hf

        backbone = build_backbone(cfg.model, device="cpu", drop_path_rate=0.0)
        backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")})
        head = build_head(backbone.embed_dim, cfg.ssl, device="cpu")
        head.load_state_dict({k.removeprefix("dino_head."): v for k, v in sd.items() if k.startswith("dino_head.")})
        tmp = root / f".tmp_{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        to_hf(backbone, tmp / "hf")
        dv2 = to_dinov2(backbone)
        save_file({k: v.contiguous() for k, v in dv2.items()}, str(tmp / "dinov2.safetensors"))
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / "dino_head.safetensors"))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        # latest/: copy then swap, so a reader never sees a half-written folder for long
        latest, staging, old = root / "latest", root / ".tmp_latest", root / ".old_latest"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(final, staging)
        shutil.rmtree(old, ignore_errors=True)
        if latest.exists():
            latest.rename(old)
        staging.rename(latest)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


# ----------------------------------------------------------------------------- the step
def _to_device(batch: dict, device: torch.device) -> dict:
    out = dict(batch)
    for k in ("global_crops", "local_crops", "masks", "mask_indices_list", "masks_weight", "n_masked_patches"):
        v = batch.get(k)
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
    return out


def _flops_per_step(cfg, student: SSLNetwork) -> float:
    """Model FLOPs of one step of this rank: student forward+backward on all crops (3x), teacher
    forward on the global crops (1x)."""
    bb = student.backbone
    dim, depth = bb.embed_dim, bb.n_blocks
    hidden = int(dim * bb.mlp_ratio)
    d, p = cfg.data, bb.patch_size
    extra = 1 + bb.num_register_tokens
    tg = (d.global_crops_size // p) ** 2 + extra
    tl = (d.local_crops_size // p) ** 2 + extra
    g = vit_flops_per_image(dim, depth, tg, hidden) * d.global_crops_number
    loc = vit_flops_per_image(dim, depth, tl, hidden) * d.local_crops_number
    return float(d.batch_size_per_gpu * (3 * (g + loc) + g))


class _Timer:
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


def _grad_norms(student: SSLNetwork, clip: float) -> dict[str, float]:
    """Clip each part separately (DINOv2 does) and return the norms before clipping."""
    norms = {}
    for name in ("backbone", "dino_head", "ibot_head"):
        part = getattr(student, name)
        if part is None:
            continue
        params = [p for p in part.parameters() if p.grad is not None]
        if not params:
            continue
        n = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if hasattr(n, "full_tensor"):
            n = n.full_tensor()
        norms[f"grad_norm_{name}"] = float(n)
    return norms


def _quiet_known_warnings() -> None:
    # FSDP2 warns that the root returns views (our logit chunks; nothing edits them in place);
    # DTensor warns that CPU random init is per shard (handled in build_networks)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    warnings.filterwarnings("ignore", message=r"DTensor random operators may not have complete support on cpu")


def _prototype_row_sum(net: SSLNetwork) -> torch.Tensor:
    """Sum of the unit-normalised prototypes over every rank's rows (FSDP shards them by row)."""
    w = net.dino_head.last_layer.weight_v
    sharded = hasattr(w, "to_local")
    s = unit_row_sum(w.to_local() if sharded else w)
    if sharded and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(s)
    return s


def _unscale_grads(student: nn.Module, scale: float) -> bool:
    """Divide the gradients by the loss scale; True when every rank's are finite."""
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
             for p in student.parameters() if p.grad is not None]
    torch._foreach_mul_(grads, 1.0 / scale)
    bad = torch.zeros((), device=grads[0].device if grads else "cpu")
    for g in grads:
        bad += (~torch.isfinite(g)).any()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(bad)
    return float(bad) == 0


def run(cfg) -> dict:
    """Train per `cfg` (a DictConfig from `dinotrain.config.load_config`, or a dict of deltas).

    Joins/creates the process group from the environment, resumes from the newest complete
    checkpoint in `cfg.output_dir` (when `train.resume`), and returns a summary dict.
    """
    cfg = _as_config(cfg)
    preflight(cfg)  # before anything is written: inputs named by the config, the run folder
    _quiet_known_warnings()
    env = init_distributed(cfg)
    try:
        return _train(cfg, env)
    finally:
        if env.created_group:
            torch.distributed.destroy_process_group()


def _train(cfg, env: DistEnv) -> dict:
    from dinotrain.config import save_config
    from dinotrain.data import build_train_loader

    t_start = time.time()
    out = Path(cfg.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
    barrier()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = env.device

    loader = build_train_loader(cfg, env.rank, env.world_size)
    student, teacher = build_networks(cfg, device, env.world_size)
    optimizer = build_optimizer(student, cfg, num_layers=student.backbone.n_blocks)
    global_batch = int(cfg.data.batch_size_per_gpu) * env.world_size
    schedules = Schedules.from_config(cfg, global_batch)
    K = int(cfg.ssl.head_n_prototypes)
    train_tensors = {
        "step": torch.zeros((), dtype=torch.long),
        "nonfinite": torch.zeros((), dtype=torch.long),
        "dino_center": torch.zeros(1, K, device=device),
        "ibot_center": torch.zeros(1, K, device=device),
        "loss_scale": torch.tensor(2.0**16),
        "good_steps": torch.zeros((), dtype=torch.long),
    }
    # different drop-path draws on different ranks, reproducible from the seed
    torch.manual_seed(int(cfg.train.seed) * 1000 + env.rank + 1)

    start_step, resumed_from = 0, None
    ckpt = latest_checkpoint(out) if cfg.train.resume else None
    if ckpt is not None:
        meta, rank_state = load_checkpoint(ckpt, student, teacher, optimizer, train_tensors, env.rank, env.world_size)
        start_step = resumed_from = int(meta["step"])
        if rank_state is not None:
            loader.load_state_dict(rank_state["loader"])
            set_rng_state(rank_state["rng"])
        elif env.is_main:
            log.warning("checkpoint %s was written by %s processes, this run has %d: networks and optimiser "
                        "are resharded exactly; the data order restarts for the new partition",
                        ckpt, meta.get("world_size"), env.world_size)
    metrics = MetricsLog(out, enabled=env.is_main)
    if env.is_main and metrics.path.exists():
        # drop lines of steps after the checkpoint: they are about to be run again
        import json

        kept = [ln for ln in metrics.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
        metrics.path.write_text("".join(ln + "\n" for ln in kept))

    max_steps = int(cfg.train.max_steps)
    flops = _flops_per_step(cfg, student)
    peak = peak_flops(device)
    mp_dtype = param_dtype(cfg.parallel.mixed_precision, device)
    fp16 = mp_dtype == torch.float16
    autocast = (torch.autocast(device.type, dtype=mp_dtype) if not cfg.parallel.fsdp and mp_dtype != torch.float32
                else None)
    bar = None
    if env.is_main and cfg.train.progress and start_step < max_steps:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    timer = _Timer(device)
    last: dict[str, float] = {}
    last_ckpt = ckpt
    last_export = None
    nonfinite = int(train_tensors["nonfinite"])
    images = 0
    warned: dict[str, int] = {}
    n_logs = 0
    t_window = time.perf_counter()
    def end_of_step(n: int) -> None:
        """Checkpoint and export on schedule (also after a skipped step: the state is still good)."""
        nonlocal last_ckpt, last_export
        if n % cfg.train.checkpoint_every == 0 or n == max_steps:
            train_tensors["nonfinite"].fill_(nonfinite)
            rank_state = {"loader": loader.state_dict(), "rng": rng_state()}
            last_ckpt = save_checkpoint(out, n, student, teacher, optimizer, train_tensors, rank_state,
                                        int(cfg.train.keep_checkpoints), env.rank, env.world_size)
        every = int(cfg.train.export_every)
        if (every > 0 and n % every == 0) or n == max_steps:
            last_export = export_teacher(teacher, cfg, n, env)

    try:
        for step in range(start_step, max_steps):
            n = step + 1  # steps completed after this one: the number that is logged and saved
            log_now = n % cfg.train.log_every == 0 or n == max_steps or step == start_step
            timer.start(sync=log_now)
            batch = _to_device(next(loader), device)
            timer.lap("data")
            values = schedules.at(step)
            apply_step_values(optimizer, values)
            params = LossParams.from_config(cfg, values.teacher_temp)

            g, loc = batch["global_crops"], batch["local_crops"]
            idx = batch["mask_indices_list"].long()
            ctx = autocast if autocast is not None else contextlib.nullcontext()
            with ctx:
                with torch.no_grad():
                    t_out = teacher(g, None, None, idx)
                s_out = student(g, loc, batch["masks"], idx)
            n_masked_total = batch["n_masked_patches"].sum().to(device=device, dtype=torch.float32)
            if torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(n_masked_total)
            teacher_out = {
                "cls_logits": t_out["global_cls_logits"],
                "masked_patch_logits": t_out["masked_patch_logits"],
                "n_masked_total": n_masked_total,
                "dino_center": train_tensors["dino_center"],
                "ibot_center": train_tensors["ibot_center"],
            }
            losses = compute_losses(s_out, teacher_out, batch, params)
            if cfg.train.debug_nan_step is not None and n == int(cfg.train.debug_nan_step):
                losses["dino_global_crops_loss"] = losses["dino_global_crops_loss"] * float("nan")
                losses["total_loss"] = losses["total_loss"] + losses["dino_global_crops_loss"]
            timer.lap("forward")

            # one small all-reduce per step: loss means for the log and a common NaN verdict
            loss_vec = all_reduce_mean(torch.stack([losses[k].detach().float() for k in LOSS_KEYS]))
            bad = [k for k, v in zip(LOSS_KEYS, loss_vec.tolist()) if not math.isfinite(v)]
            if bad:
                nonfinite += 1
                optimizer.zero_grad(set_to_none=True)
                bad_terms = [k for k in bad if k != "total_loss"] or bad
                msg = (f"step {n}: loss term '{bad_terms[0]}' is not finite ({', '.join(bad)}); "
                       f"{nonfinite} non-finite step(s) so far, train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}")
                if nonfinite > int(cfg.train.max_nonfinite_steps):
                    keep = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise NonFiniteLossError(
                        f"{msg}; stopping ({keep}). Lower optim.lr or raise optim.warmup_steps, "
                        "check the data (dinotrain data preview), or use parallel.mixed_precision=bf16 instead of fp16"
                    )
                log.warning("%s: skipping the update", msg)
                end_of_step(n)
                continue

            if fp16:
                # dynamic loss scaling: fp16 gradients underflow unscaled; an overflow skips the
                # step and halves the scale, 1000 clean steps double it
                (losses["total_loss"] * train_tensors["loss_scale"]).backward()
                if not _unscale_grads(student, float(train_tensors["loss_scale"])):
                    optimizer.zero_grad(set_to_none=True)
                    train_tensors["loss_scale"] /= 2
                    train_tensors["good_steps"].zero_()
                    log.warning("step %d: fp16 gradient overflow, loss scale -> %g", n, float(train_tensors["loss_scale"]))
                    end_of_step(n)
                    continue
                train_tensors["good_steps"] += 1
                if int(train_tensors["good_steps"]) % 1000 == 0:
                    train_tensors["loss_scale"] *= 2
            else:
                losses["total_loss"].backward()
            timer.lap("backward")
            if step < schedules.freeze_last_layer_steps:
                for name, p in student.named_parameters():
                    if "last_layer" in name:
                        p.grad = None  # frozen: no gradient, no Adam moments, no clipping share
            gnorms = _grad_norms(student, float(cfg.optim.clip_grad))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema_update(teacher, student, values.momentum)
            if params.centering == "softmax_center":
                from dinotrain.losses import update_center

                m = float(cfg.ssl.center_momentum)
                train_tensors["dino_center"] = update_center(train_tensors["dino_center"], t_out["global_cls_logits"], m)
                train_tensors["ibot_center"] = update_center(train_tensors["ibot_center"], t_out["masked_patch_logits"], m)
            train_tensors["step"].fill_(n)
            timer.lap("optimizer")
            images += g.shape[0] // int(cfg.data.global_crops_number) * env.world_size

            last = dict(zip(LOSS_KEYS, loss_vec.tolist()))
            if log_now:
                now = time.perf_counter()
                elapsed = max(now - t_window, 1e-9)
                step_time = sum(timer.phases.values())
                with torch.no_grad():
                    cls_t, _ = teacher_targets(teacher_out, params)
                    stats = collapse_stats(s_out["global_cls"], cls_t)
                    stats.update(head_collapse_stats(t_out["global_cls_bottleneck"], _prototype_row_sum(teacher), K))
                    stats["student_head_bottleneck_cos"] = mean_pairwise_cosine(s_out["global_cls_bottleneck"])
                record = {"step": n, **last, **values.as_dict(), **gnorms, **stats,
                          "images_per_s": images / elapsed, "step_time_s": step_time,
                          **{f"time_{k}_s": v for k, v in timer.phases.items()},
                          "peak_memory_gb": peak_memory_gb(device), "nonfinite_steps": nonfinite,
                          "world_size": env.world_size}
                if peak:
                    record["mfu"] = flops / max(step_time, 1e-9) / peak
                if hasattr(loader, "stats"):
                    for s in loader.stats().get("sources", []):
                        record[f"epochs/{s['name']}"] = s["epochs_seen"]
                metrics.write(record)
                # at DINOv2's init (LayerScale 1e-5) every image has nearly the same CLS: judge
                # collapse only after the warm-up, and repeat a warning at most every 10 logs
                if env.is_main and step >= schedules.warmup_steps:
                    for w in collapse_warnings(stats, n):
                        kind = w.split(":", 2)[1][:20]
                        if warned.get(kind, -10) <= n_logs - 10:
                            warned[kind] = n_logs
                            log.warning(w)
                n_logs += 1
                images, t_window = 0, now
                if bar is not None:
                    bar.set_postfix(loss=f"{last['total_loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
            if bar is not None:
                bar.update(1)

            end_of_step(n)
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
        if hasattr(loader, "close"):
            loader.close()
        torch.use_deterministic_algorithms(was_deterministic)

    return {
        "output_dir": str(out),
        "start_step": start_step,
        "final_step": max(start_step, max_steps),
        "resumed_from": resumed_from,
        "losses": last,
        "nonfinite_steps": nonfinite,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "export": str(last_export) if last_export else None,
        "world_size": env.world_size,
        "wall_s": time.time() - t_start,
    }
