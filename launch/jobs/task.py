"""The checkpointable callable every SLURM (or local) task runs: distributed env, train, evaluate.

submitit pickles a `TrainTask` into the job folder; each task unpickles it and calls it. On
preemption or the time-limit signal the trainer stops every rank after the step in flight and
writes a checkpoint of it, then hands USR2 to submitit's handler, which calls `checkpoint()` on
rank 0: it returns the same task, the requeued job starts it again and the trainer resumes from
that checkpoint in `output_dir`, so no state has to travel through the pickle.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dinotrain.run_layout import EVAL
from launch.jobs import runstate
from launch.jobs.runstate import State

DEFAULT_ENTRY = "dinotrain.train.loop:run"
EVAL_ENTRY = "dinotrain.eval.run:evaluate_models"
EVAL_SUBDIR = EVAL  # <run>/eval/results.json, read by `sweep report`

log = logging.getLogger("dinotrain.launch")


def resolve_entry(spec: str) -> Callable[..., Any]:
    """'package.module:function' -> the function (importable on every node)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"entry point '{spec}' must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attr)


def config_from_container(data: dict[str, Any]) -> DictConfig:
    """The plain dict that travelled in the pickle -> a validated, typed config."""
    from dinotrain.config import schema, validate

    cfg = OmegaConf.merge(schema(), OmegaConf.create(data))
    validate(cfg)
    return cfg


def export_distributed_env(use_gpus: bool) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT of this task, from submitit's job environment.

    Overwrites what may have been inherited: inside the job these values are the only right ones.
    With GPUs, each task keeps only its own device, so it is cuda:0 in every task.
    """
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    env.master_addr = node_address(env.master_addr)
    env.export(set_cuda_visible_devices=False, overwrite=True)
    if use_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = own_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"), env.local_rank)
    return {"RANK": str(env.rank), "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank),
            "MASTER_ADDR": env.master_addr, "MASTER_PORT": str(env.master_port)}


def node_address(node: str) -> str:
    """An address every task can reach `node` at: its name when that resolves, else SLURM's NodeAddr.

    submitit takes the rendezvous host from the job's node list, which holds SLURM node
    names; where those are not host names (NodeName=n1 NodeAddr=10.0.0.7) only the
    controller knows the address.
    """
    try:
        socket.getaddrinfo(node, None)
        return node
    except socket.gaierror:
        pass
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return node
    addr = re.search(r"\bNodeAddr=(\S+)", out.stdout)
    return addr.group(1) if out.returncode == 0 and addr else node


def own_gpu(visible: str | None, local_rank: int) -> str:
    """The CUDA_VISIBLE_DEVICES of one task.

    SLURM's --gpus-per-node shows every task all of the node's GPUs ("4,5,6,7" on a shared
    node): take the local_rank-th of those, not device number local_rank. A single entry
    means SLURM already bound one GPU to this task (--gpus-per-task): keep it.
    """
    devices = [d for d in (visible or "").split(",") if d.strip()]
    if not devices:
        return str(local_rank)
    if len(devices) == 1:
        return devices[0]
    return devices[local_rank % len(devices)]


def wants_eval(cfg: DictConfig) -> bool:
    return bool(cfg.launch.run_eval and len(cfg.eval.tasks) > 0)


def check_eval_config(cfg: DictConfig) -> None:
    """Fail at submission, not after hours of training, when the evaluation cannot run."""
    from dinotrain.config import ConfigError

    if wants_eval(cfg) and not cfg.eval.data_root:
        raise ConfigError("eval.data_root is not set but eval.tasks are: give eval.data_root=PATH (the folder "
                          "holding jsrt/, covid_cxr/ ...) or launch.run_eval=false")


def evaluate_run(run_dir: Path, cfg: DictConfig, **settings: Any) -> bool:
    """Evaluate a trained run (launch.run_eval and eval.tasks) into <run>/eval/results.json.

    Called at the end of the job, and by `dinotrain study --reevaluate` on finished runs (with the
    study's own eval `settings`, which replace the config's: one report, one set of settings).
    """
    if not wants_eval(cfg):
        return False
    try:
        evaluate = resolve_entry(EVAL_ENTRY)
    except (ImportError, AttributeError) as e:
        # training succeeded: keep it, and say how to evaluate once the suite is installed
        log.warning("evaluation skipped: %s is not available (%s); run `dinotrain eval %s --tasks ...`",
                    EVAL_ENTRY, e, run_dir)
        return False
    evaluate([str(run_dir)], list(cfg.eval.tasks), str(cfg.eval.data_root),
             Path(run_dir) / EVAL_SUBDIR, eval_cfg=cfg.eval, with_plot=False, **settings)
    return True


def _job_id() -> str:
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not inside a submitit job (a direct call)
        return ""


class TrainTask:
    """Train (then evaluate) one run. Picklable: holds the resolved config as plain data.

    entry: the training function, 'module:function', called with the typed config. The
    default is the trainer; tests and `launch.jobs.probe` pass a lighter one.
    """

    def __init__(self, cfg: DictConfig | dict[str, Any], entry: str = DEFAULT_ENTRY) -> None:
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        self.cfg: dict[str, Any] = cfg
        self.entry = entry

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg["output_dir"])

    def __call__(self) -> str:
        cfg = config_from_container(self.cfg)
        if cfg.launch.cluster != "debug":  # debug runs in the submitting process: leave its env alone
            export_distributed_env(use_gpus=cfg.launch.gpus_per_node > 0)
        rank = int(os.environ.get("RANK", "0"))
        job_id = _job_id()
        if rank == 0:
            runstate.write_status(self.run_dir, State.RUNNING, job_id=job_id,
                                  world_size=int(os.environ.get("WORLD_SIZE", "1")))
        try:
            resolve_entry(self.entry)(cfg)
            if rank == 0:
                evaluated = self._evaluate(cfg)
                runstate.write_status(self.run_dir, State.DONE, evaluated=evaluated)
        except BaseException as e:  # BaseException: torch's CheckpointException is one
            # preemption exits through submitit's handler after checkpoint() marked the run 'requeued'
            requeued = (runstate.read_status(self.run_dir) or {}).get("state") == State.REQUEUED
            if rank == 0 and not requeued:
                runstate.write_status(self.run_dir, State.FAILED, error=f"{type(e).__name__}: {e}",
                                      traceback=traceback.format_exc(limit=20))
            raise
        return str(self.run_dir)

    def _evaluate(self, cfg: DictConfig) -> bool:
        return evaluate_run(self.run_dir, cfg)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on rank 0 when SLURM signals preemption/time-out: requeue the same task.

        The trainer's own DCP checkpoint of the step it stopped at carries the state; the requeued
        task resumes from it.
        """
        from submitit.helpers import DelayedSubmission

        # SLURM's restart count at the request: status.decide tells a requeue still in flight
        # (count unchanged) from a requeued attempt that ended without a word (count moved on)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        runstate.write_status(self.run_dir, State.REQUEUED, restarts=restarts)
        return DelayedSubmission(TrainTask(self.cfg, self.entry), *args, **kwargs)
