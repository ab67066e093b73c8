"""What is in a checkpoint folder and how it is written and read (torch.distributed.checkpoint).
When, where, how many and whether complete is `ckpt_manager.CheckpointManager`'s business.

    ckpt/step_0000100/   DCP files (student, teacher, optimiser state, centres, step)
                         + rank_00000.json ... (loader state and RNG states of each rank)
                         + meta.json (step, world size)
                         + manifest.json (every file's size and CRC-32; written last)
    ckpt/.tmp_step_0000100/   a checkpoint being written (renamed when every rank is done)

Only tensors go through DCP (DTensor shards reshard on load: 2 ranks -> 1 works); the small
per-rank state is JSON, so nothing of ours is ever unpickled.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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

__all__ = ["Registered", "from_jsonable", "is_complete", "latest_checkpoint", "list_checkpoints", "read_files",
           "rng_state", "set_rng_state", "step_dir", "to_jsonable", "write_files", "write_meta"]

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


@dataclass(frozen=True)
class Registered:
    """What a checkpoint holds, registered once by the trainer: the networks, the optimiser and
    the `TrainState` (its shared tensors go through DCP, its per-rank state is JSON)."""

    student: nn.Module
    teacher: nn.Module
    optimizer: Any
    train_state: Any  # dinotrain.train.state.TrainState (state_dict / rank_state_dict and loads)


def write_files(folder: Path, states: Registered, rank: int) -> None:
    """This rank's part of a checkpoint in `folder`: its DCP shards (a collective: every rank
    calls it) and its JSON state. `meta.json` and the manifest are the manager's."""
    state, _ = _tensor_state(states.student, states.teacher, states.optimizer, states.train_state.state_dict())
    dcp.save(state, checkpoint_id=str(folder))
    (folder / f"rank_{rank:05d}.json").write_text(json.dumps(to_jsonable(states.train_state.rank_state_dict())))


def write_meta(folder: Path, step: int, world_size: int) -> None:
    (folder / "meta.json").write_text(json.dumps({"step": step, "world_size": world_size, "time": time.time()}))


def read_files(path: Path, states: Registered, rank: int = 0, world_size: int = 1) -> tuple[dict, bool]:
    """Restore the registered states from checkpoint folder `path` (a collective under DCP).

    Returns (meta, whether this rank's JSON state was restored). It is not when the checkpoint
    was written by a different number of ranks (the loader then restarts its position for the
    new partition; the networks and optimiser reshard exactly).
    """
    meta = json.loads((path / "meta.json").read_text())
    shared = states.train_state.state_dict()
    state, osd = _tensor_state(states.student, states.teacher, states.optimizer, shared)
    optim_state = {"optimizer": state.pop("optimizer")}
    dcp.load(state, checkpoint_id=str(path))
    # parameters that never had a gradient before the save (the mask token of mask-free
    # batches) have no AdamW state there: their fresh zeros are equivalent
    dcp.load(optim_state, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_model_state_dict(states.student, state["student"])
    set_model_state_dict(states.teacher, state["teacher"])
    osd["state"] = optim_state["optimizer"]
    set_optimizer_state_dict(states.student, states.optimizer, osd)
    for k, v in state["train"].items():
        shared[k].copy_(v)
    states.train_state.load_state_dict(shared)
    states.train_state.step = int(meta["step"])
    rank_file = path / f"rank_{rank:05d}.json"
    if meta.get("world_size") != world_size or not rank_file.is_file():
        return meta, False
    states.train_state.load_rank_state_dict(from_jsonable(json.loads(rank_file.read_text())))
    return meta, True
