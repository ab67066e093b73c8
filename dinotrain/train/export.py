"""Teacher exports during training: `export/step_NNNNNNN/{hf/, dinov2.safetensors,
dinov2_config.json, dino_head.safetensors}`, mirrored to `export/latest/`, written with the same
savers as `dinotrain export` (models/convert.py). `hf/preprocessor_config.json` holds the run's
preprocessing (global crop size, data.mean/std), so `AutoImageProcessor` + `AutoModel` feed the
teacher what `dinotrain eval` feeds it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from dinotrain.run_layout import config_path, export_dir
from dinotrain.train.distributed import DistEnv, barrier
from dinotrain.train.meta_arch import SSLNetwork


def _write_export(sd: dict, model, ssl, folder: Path, data=None) -> None:
    from dinotrain.models import build_backbone, build_head
    from dinotrain.models.convert import run_preprocessor, save_dino_head, save_dinov2, sub_state_dict, to_hf

    # building the export's modules draws initial weights from the global RNG: do it on a fork, so
    # the steps after an export draw (drop path) as a run resumed from that step's checkpoint does
    # (the RNG state saved there is the one before the export)
    with torch.random.fork_rng(devices=[]):
        backbone = build_backbone(model, device="cpu", drop_path_rate=0.0)
        backbone.load_state_dict(sub_state_dict(sd, "backbone."))
        head = build_head(backbone.embed_dim, ssl, device="cpu")
        head.load_state_dict(sub_state_dict(sd, "dino_head."))
        to_hf(backbone, folder / "hf", None if data is None else run_preprocessor(data, int(model.in_chans)))
    save_dinov2(backbone, folder)
    save_dino_head(head, folder / "dino_head.safetensors")


def _replace_dir(src: Path, dst: Path) -> None:
    """Copy `src` to `dst`, then swap, so a reader never sees a half-written folder for long."""
    staging, old = dst.with_name(f".tmp_{dst.name}"), dst.with_name(f".old_{dst.name}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    staging.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def export_teacher(teacher: SSLNetwork, model, ssl, output_dir: str | Path, step: int, env: DistEnv,
                   data=None) -> Path:
    """Every rank takes part (gathering the shards); rank 0 writes. `model`, `ssl`, `data`: the
    config's sections of those names (without `data`, the HF preprocessor is RAD-DINO's)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(teacher, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final = export_dir(output_dir, step)
    if env.is_main:
        tmp = final.with_name(f".tmp_{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_export(sd, model, ssl, tmp, data)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _replace_dir(final, export_dir(output_dir, None))
    barrier()
    return final


def export_checkpoint(run_dir: str | Path) -> Path:
    """`export/step_N/` and `export/latest/` from the run's newest complete checkpoint, in this one
    process (no process group): what a run stopped before its final export (a time budget, a
    preemption) lacks. The teacher is the run's network with the checkpoint's weights, written by
    `export_teacher` as the trainer writes it."""
    from dinotrain.config import load_config
    from dinotrain.dcp_local import load_in_one_process
    from dinotrain.run_layout import step_of, usable_checkpoint
    from dinotrain.train.initial import initial_teacher

    # the full check (checksums), as eval and export do: a broken newest checkpoint is skipped
    ckpt = usable_checkpoint(run_dir, warn=lambda line: print(f"warning: {line}", file=sys.stderr))
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint under ckpt/ to export")
    step = step_of(ckpt)
    teacher, cfg = initial_teacher(load_config(config_path(run_dir)))
    state = {"teacher": teacher.state_dict()}
    load_in_one_process(state, ckpt)  # in place, into the teacher's own tensors
    teacher.load_state_dict(state["teacher"])
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), created_group=False)
    return export_teacher(teacher, cfg.model, cfg.ssl, run_dir, step, env, data=cfg.data)
