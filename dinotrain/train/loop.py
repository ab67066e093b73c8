"""`run(cfg)`: the one training entry of every mode (local, torchrun, SLURM task).

Order of a run: inputs checked (data sources, weights files) -> process group -> run folder
writable, locked (one training per folder), checked (resumable, or the old run set aside on
train.resume=false) and config saved ->
`Trainer` (loader, student/teacher on the meta device, FSDP2, init or pretrained weights,
optimiser) -> `Trainer.train()` (resume from the newest complete checkpoint, steps with
metrics, checkpoints and teacher exports) -> a summary.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dinotrain.train.ckpt_manager import CheckpointManager
from dinotrain.train.distributed import DistEnv, barrier, init_distributed
from dinotrain.train.networks import build_networks
from dinotrain.train.preemption import TrainingStopped
from dinotrain.train.preflight import check_inputs
from dinotrain.train.run_dir import check_writable, prepare_run_dir
from dinotrain.train.trainer import NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "Trainer", "TrainingStopped", "build_networks", "run"]


def _as_config(cfg: Any) -> DictConfig:
    from dinotrain.config import schema, validate

    if isinstance(cfg, DictConfig):
        return cfg
    merged = OmegaConf.merge(schema(), OmegaConf.create(cfg) if isinstance(cfg, dict) else OmegaConf.structured(cfg))
    validate(merged)
    return merged


@contextlib.contextmanager
def _quiet_known_warnings() -> Iterator[None]:
    """For this run only: FSDP2 warns that the root returns views (our logit chunks; nothing
    edits them in place); DTensor warns that CPU random init is per shard (networks.py offsets
    the seed by rank for that)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        warnings.filterwarnings("ignore", message=r"DTensor random operators may not have complete support on cpu")
        yield


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for this run (`train.deterministic`), the previous setting after."""
    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _prepare_output_dir(cfg: DictConfig, env: DistEnv, ckpt: CheckpointManager) -> None:
    """Before anything is written: every rank checks the folder is writable; rank 0 takes the
    folder's lock (one writer per run folder); every rank checks it is resumable with these
    settings (the same files give every rank the same verdict); rank 0 moves an old run aside
    (train.resume=false), creates the run directory and saves the resolved config; the others wait."""
    from dinotrain.config import save_config

    check_writable(Path(cfg.output_dir))
    ckpt.acquire_lock()
    prepare_run_dir(cfg, rank=env.rank, world_size=env.world_size)
    if env.is_main:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
    barrier()


def _check_machine(cfg: DictConfig) -> None:
    """UserError for a setting this machine lacks the hardware or package for; its notes (GPU
    settings that run differently on the CPU) logged once, by the first rank."""
    import logging
    import os

    from dinotrain.train.machine import check_machine

    for note in check_machine(cfg):
        if os.environ.get("RANK", "0") == "0":
            logging.getLogger("dinotrain.train").warning("note: %s", note)


def run(cfg) -> dict:
    """Train per `cfg` (a DictConfig from `dinotrain.config.load_config`, or a dict of deltas).

    Joins/creates the process group from the environment, resumes from the newest complete
    checkpoint in `cfg.output_dir` (when `train.resume`), and returns a summary dict.
    """
    cfg = _as_config(cfg)
    _check_machine(cfg)  # settings this machine cannot run: before the loader and the process group
    check_inputs(cfg)  # the files the config names, before the process group and before any write
    with _quiet_known_warnings():
        env = init_distributed(cfg)
        ckpt = CheckpointManager.from_config(cfg, env)
        try:
            _prepare_output_dir(cfg, env, ckpt)
            with _deterministic(bool(cfg.train.deterministic)):
                return Trainer(cfg, env, ckpt).train()
        finally:
            ckpt.release_lock()
            if env.created_group:
                torch.distributed.destroy_process_group()
