"""A cluster probe: a tiny checkpointing step counter with the trainer's calling convention.

`dinotrain launch CONFIG --probe` submits it instead of the trainer, to check a cluster's
wiring in seconds: every rank joins a gloo process group from the exported environment and
all-reduces its rank; rank 0 logs one metrics line per step and checkpoints every
`train.checkpoint_every` steps; a requeued job resumes from the newest checkpoint and drops
the metrics lines logged after it, so the final metrics hold each step exactly once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from dinotrain.atomic import keep_jsonl_until, write_text
from dinotrain.run_layout import metrics_path
from dinotrain.train.ckpt_manager import checkpoint_due  # the trainer's rule, not a copy of it

ENTRY = "launch.jobs.probe:count_steps"
STEP_SECONDS_ENV = "DINOTRAIN_PROBE_STEP_S"  # seconds per step, to give a requeue test time to act
CKPT = "probe_ckpt.json"


def count_steps(cfg: DictConfig) -> int:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    rank_sum = rank
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        t = torch.tensor([rank])
        dist.all_reduce(t)
        rank_sum = int(t.item())
    ckpt = out / CKPT
    start = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    metrics = metrics_path(out)
    if rank == 0:
        keep_jsonl_until(metrics, start)
    delay = float(os.environ.get(STEP_SECONDS_ENV, "0"))
    for step in range(start + 1, int(cfg.train.max_steps) + 1):
        time.sleep(delay)
        if rank == 0:
            with metrics.open("a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0 / step, "world_size": world,
                                    "rank_sum": rank_sum}) + "\n")
            if checkpoint_due(step, int(cfg.train.checkpoint_every), int(cfg.train.max_steps)):
                write_text(ckpt, json.dumps({"step": step}))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return int(cfg.train.max_steps)
