"""Distributed checkpoints (torch.distributed.checkpoint): atomic, pruned, reshardable.

Layout of a run directory:

    ckpt/step_0000100/   DCP files (student, teacher, optimiser state, centres, step)
                         + rank_00000.json ... (loader state and RNG states of each rank)
                         + meta.json (step, world size; written last: marks it complete)
    ckpt/.tmp_step_0000100/   a checkpoint being written (renamed when every rank is done)

Only tensors go through DCP (DTensor shards reshard on load: 2 ranks -> 1 works); the small
per-rank state is JSON, so nothing of ours is ever unpickled.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

# where checkpoints live is the run layout's business; re-exported for the trainer's callers
from dinotrain.run_layout import is_complete, latest_checkpoint, list_checkpoints, step_dir

__all__ = ["from_jsonable", "is_complete", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
           "rng_state", "save_checkpoint", "set_rng_state", "step_dir", "to_jsonable"]

# ----------------------------------------------------------------------------- JSON for states
def to_jsonable(obj: Any) -> Any:
    """Loader and RNG states as JSON: tensors and arrays become tagged base64 records."""
    import numpy as np

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "data": base64.b64encode(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").decode()}
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        return {"__ndarray__": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode()}
    return obj


def from_jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        if "__tensor__" in obj:
            dtype = getattr(torch, obj["__tensor__"])
            raw = bytearray(base64.b64decode(obj["data"]))
            flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            return flat.view(dtype).reshape(obj["shape"]).clone()
        if "__ndarray__" in obj:
            return np.frombuffer(base64.b64decode(obj["data"]), dtype=np.dtype(obj["__ndarray__"])).reshape(
                obj["shape"]).copy()
        if "__bytes__" in obj:
            return base64.b64decode(obj["__bytes__"])
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- save / load
def _tensor_state(student: nn.Module, teacher: nn.Module, optimizer, train_tensors: dict) -> dict:
    # param_groups hold floats/bools (they would be pickled by DCP): they are rebuilt from the
    # config instead, only the per-parameter tensors (exp_avg, exp_avg_sq, step) are saved
    osd = get_optimizer_state_dict(student, optimizer)
    return {
        "student": get_model_state_dict(student),
        "teacher": get_model_state_dict(teacher),
        "optimizer": osd["state"],
        "train": dict(train_tensors),
    }, osd


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    student: nn.Module,
    teacher: nn.Module,
    optimizer,
    train_tensors: dict[str, torch.Tensor],
    rank_state: dict,
    keep: int,
    rank: int = 0,
    world_size: int = 1,
) -> Path:
    """Write checkpoint `step` atomically (temporary folder renamed by rank 0 once all ranks are
    done), then keep only the newest `keep`. Every rank must call it."""
    final = step_dir(output_dir, step)
    tmp = final.parent / f".tmp_{final.name}"
    if rank == 0:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # a partial write of a killed run
    _barrier()
    state, _ = _tensor_state(student, teacher, optimizer, train_tensors)
    dcp.save(state, checkpoint_id=str(tmp))
    (tmp / f"rank_{rank:05d}.json").write_text(json.dumps(to_jsonable(rank_state)))
    _barrier()
    if rank == 0:
        meta = {"step": step, "world_size": world_size, "time": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(
    path: str | Path,
    student: nn.Module,
    teacher: nn.Module,
    optimizer,
    train_tensors: dict[str, torch.Tensor],
    rank: int = 0,
    world_size: int = 1,
) -> tuple[dict, dict | None]:
    """Restore networks, optimiser and `train_tensors` (in place) from `path`.

    Returns (meta, this rank's JSON state). The rank state is None when the checkpoint was
    written by a different number of ranks (the loader then restarts its position for the new
    partition; the networks and optimiser reshard exactly).
    """
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"checkpoint {path} is incomplete (no meta.json or .metadata): delete it")
    meta = json.loads((path / "meta.json").read_text())
    state, osd = _tensor_state(student, teacher, optimizer, train_tensors)
    optim_state = {"optimizer": state.pop("optimizer")}
    dcp.load(state, checkpoint_id=str(path))
    # parameters that never had a gradient before the save (the mask token of mask-free
    # batches) have no AdamW state there: their fresh zeros are equivalent
    dcp.load(optim_state, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
    state["optimizer"] = optim_state["optimizer"]
    set_model_state_dict(student, state["student"])
    set_model_state_dict(teacher, state["teacher"])
    osd["state"] = state["optimizer"]
    set_optimizer_state_dict(student, optimizer, osd)
    for k, v in state["train"].items():
        train_tensors[k].copy_(v)
    rank_file = path / f"rank_{rank:05d}.json"
    rank_state = None
    if meta.get("world_size") == world_size and rank_file.is_file():
        rank_state = from_jsonable(json.loads(rank_file.read_text()))
    return meta, rank_state
