"""submitit executors built from `LaunchConfig`, the sbatch script of a dry run, and a clean submit env.

One mapping (`sbatch_parameters`) turns the `launch` section into sbatch options; the SLURM
executor and `--dry-run` both use it, so what the dry run prints is what gets submitted.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Variables a SLURM job (or torchrun) sets for its own processes. Inherited by a job submitted
# from inside a job, they make the child claim the parent's GPUs, nodes or rendezvous.
_INHERITED_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_")
_DISTRIBUTED_NAMES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                      "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
# Site configuration, not job state: the client needs it to find the controller at all.
_KEEP = ("SLURM_CONF",)


def leaked_names(environ: dict[str, str] | os._Environ) -> list[str]:
    """Names of the job-specific variables that must not reach a newly submitted job."""
    return sorted(
        k for k in environ
        if k not in _KEEP and (k.startswith(_INHERITED_PREFIXES) or k in _DISTRIBUTED_NAMES)
    )


@contextlib.contextmanager
def clean_submit_env() -> Iterator[None]:
    """Hide the current job's SLURM_*/rank variables while submitting (restored afterwards).

    submitit.helpers.clean_env does the same but also drops SLURM_CONF, which would point
    sbatch at the default cluster instead of the configured one.
    """
    saved = {k: os.environ.pop(k) for k in leaked_names(os.environ)}
    try:
        yield
    finally:
        os.environ.update(saved)


def job_name(cfg: DictConfig) -> str:
    return Path(str(cfg.output_dir)).name or "dinotrain"


def jobs_folder(cfg: DictConfig) -> Path:
    """Where submitit writes the job's pickles and per-rank logs (`%j` = job id)."""
    base = cfg.launch.folder or str(Path(str(cfg.output_dir)) / "jobs")
    return Path(base).absolute() / "%j"


def sbatch_parameters(cfg: DictConfig, name: str | None = None) -> dict[str, Any]:
    """The `launch` section as sbatch options (submitit's `_make_sbatch_string` keywords)."""
    la = cfg.launch
    params: dict[str, Any] = {
        "job_name": name or job_name(cfg),
        "time": int(la.time_minutes),
        "nodes": int(la.nodes),
        "ntasks_per_node": int(la.tasks_per_node),
        "cpus_per_task": int(la.cpus_per_task),
        "signal_delay_s": int(la.signal_delay_s),
        "array_parallelism": int(la.array_parallelism),
    }
    if la.gpus_per_node > 0:
        params["gpus_per_node"] = int(la.gpus_per_node)
    if la.mem_gb > 0:
        params["mem"] = f"{int(la.mem_gb)}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if la[key]:
            params[key] = str(la[key])
    if la.exclusive:
        params["exclusive"] = True
    if la.setup:
        params["setup"] = [str(s) for s in la.setup]
    extra = OmegaConf.to_container(la.additional_parameters, resolve=True) or {}
    if extra:
        params["additional_parameters"] = dict(extra)
    return params


def submit_command(folder: Path) -> str:
    """The command each SLURM task runs (submitit's own job runner)."""
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(cfg: DictConfig, array_size: int | None = None, folder: Path | None = None,
                  name: str | None = None) -> str:
    """The sbatch file `dinotrain launch` (or a sweep's array) would submit for `cfg` (no SLURM needed)."""
    from submitit.slurm.slurm import _make_sbatch_string  # the generator submitit itself uses

    folder = folder or jobs_folder(cfg)
    params = sbatch_parameters(cfg, name)
    if array_size is not None:
        params["map_count"] = int(array_size)
    return _make_sbatch_string(command=submit_command(folder), folder=folder, **params)


def make_executor(cfg: DictConfig, folder: Path | None = None, name: str | None = None):
    """A submitit executor for `launch.cluster` (slurm | local | debug) with the config's resources."""
    import submitit

    la = cfg.launch
    folder = folder or jobs_folder(cfg)
    if la.cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(la.max_num_timeout))
        ex.update_parameters(**sbatch_parameters(cfg, name))
        return ex
    if la.nodes != 1:
        from dinotrain.config import ConfigError

        raise ConfigError(f"invalid value {la.nodes} for 'launch.nodes': cluster={la.cluster} runs on this "
                          "machine only; use launch.nodes=1 or launch.cluster=slurm")
    ex = submitit.AutoExecutor(folder=folder, cluster=str(la.cluster))
    if la.cluster == "local":
        ex.update_parameters(timeout_min=int(la.time_minutes), tasks_per_node=int(la.tasks_per_node),
                             gpus_per_node=int(la.gpus_per_node), nodes=1, name=name or job_name(cfg))
    return ex
