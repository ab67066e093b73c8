"""Process-group setup for every run mode: one process, torchrun, or a SLURM task.

Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun, submitit's TorchDistributedEnvironment) or
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, and MASTER_ADDR / MASTER_PORT; a single process
without them gets an in-memory store, so the same FSDP2 code path runs everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool  # True when this module initialised the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            return int(v)
    return default


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible: set train.device=cpu or auto")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(cfg) -> DistEnv:
    """Join (or create) the process group this run trains in."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=rank)
        return DistEnv(rank, world, local, resolve_device(cfg.train.device, local), False)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    device = resolve_device(cfg.train.device, local)
    backend = cfg.parallel.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(minutes=30)
    if world == 1 and not os.environ.get("MASTER_ADDR"):
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise RuntimeError(
                f"{world} processes but {', '.join(missing)} not set: launch with torchrun, or export "
                "MASTER_ADDR/MASTER_PORT (submitit's TorchDistributedEnvironment().export() does)"
            )
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout, **kw)
    return DistEnv(rank, world, local, device, True)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over the processes (in place, returned); the identity on one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0
