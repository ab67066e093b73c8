"""Submit one run, or many as one job array, and record each submission beside its run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from launch.jobs import runstate
from launch.jobs.executor import clean_submit_env, make_executor
from launch.jobs.task import DEFAULT_ENTRY, TrainTask, check_eval_config


def absolute_run_config(cfg: DictConfig) -> DictConfig:
    """A copy whose output_dir is absolute: the job's working directory may differ from ours."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.output_dir = str(Path(str(cfg.output_dir)).absolute())
    return cfg


def _prepare(cfg: DictConfig) -> DictConfig:
    from dinotrain.config import save_config, schema
    from dinotrain.train.preflight import preflight

    cfg = OmegaConf.merge(schema(), absolute_run_config(cfg))
    check_eval_config(cfg)
    preflight(cfg, world_size=int(cfg.launch.nodes) * int(cfg.launch.tasks_per_node))  # before config.yaml is saved
    if cfg.eval.data_root:
        cfg.eval.data_root = str(Path(str(cfg.eval.data_root)).absolute())
    save_config(cfg, cfg.output_dir)
    runstate.clear_status(cfg.output_dir)
    return cfg


def _record(cfg: DictConfig, job: Any) -> None:
    logs = Path(str(job.paths.stdout)).parent
    runstate.record_submission(cfg.output_dir, job.job_id, str(cfg.launch.cluster), logs)


def submit_run(cfg: DictConfig, entry: str = DEFAULT_ENTRY):
    """Submit one training run (all its nodes and tasks) as one job; returns the submitit job.

    With launch.cluster=debug the run happens here, in this process, before this returns.
    """
    cfg = _prepare(cfg)
    executor = make_executor(cfg)
    with clean_submit_env():
        job = executor.submit(TrainTask(cfg, entry))
    _record(cfg, job)
    if cfg.launch.cluster == "debug":
        job.result()
    return job


def submit_array(cfgs: list[DictConfig], folder: Path, name: str, entry: str = DEFAULT_ENTRY) -> list[Any]:
    """Submit several runs as one SLURM job array (resources and parallelism from the first config)."""
    if not cfgs:
        return []
    cfgs = [_prepare(c) for c in cfgs]
    executor = make_executor(cfgs[0], folder=Path(folder).absolute() / "%j", name=name)
    with clean_submit_env(), executor.batch():
        jobs = [executor.submit(TrainTask(c, entry)) for c in cfgs]
    for c, job in zip(cfgs, jobs):
        _record(c, job)
    if cfgs[0].launch.cluster == "debug":
        for job in jobs:
            job.result()
    return jobs
