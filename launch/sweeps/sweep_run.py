"""Submit a sweep as one job array, idempotently: finished and queued runs are left alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from launch.jobs import queue
from launch.jobs import status as run_status
from launch.jobs.executor import sbatch_script
from launch.jobs.runstate import State
from launch.jobs.task import DEFAULT_ENTRY
from launch.sweeps.sweep import expand, run_config, write_run_record


@dataclass
class SweepPlan:
    sweep_dir: Path
    submit: list[str]    # run names to (re)submit
    skip: dict[str, str]  # run name -> state (done, pending, running, requeued)
    script: str = ""      # the array's sbatch script (SLURM only)


def plan_and_submit(spec: DictConfig, dry_run: bool = False, entry: str = DEFAULT_ENTRY) -> SweepPlan:
    """Write each run's folder (config.yaml, run.json), then submit new and failed runs as an array."""
    from launch.jobs.submit import submit_array

    sweep_dir = Path(spec.output_dir)
    runs = expand(spec)
    cfgs = {r.name: run_config(spec, r) for r in runs}  # validates every run before anything is submitted
    snapshot = queue.squeue_states()
    todo, skip = [], {}
    for r in runs:
        state = run_status.run_state(Path(cfgs[r.name].output_dir), snapshot).state
        if state in (State.NEW, State.FAILED):
            todo.append(r)
        else:
            skip[r.name] = state
    plan = SweepPlan(sweep_dir, [r.name for r in todo], skip)
    if todo and cfgs[todo[0].name].launch.cluster == "slurm":
        plan.script = sbatch_script(cfgs[todo[0].name], array_size=len(todo), folder=sweep_dir / "jobs" / "%j",
                                    name=str(spec.name))
    if dry_run:
        return plan
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.yaml").write_text(OmegaConf.to_yaml(spec, resolve=True))
    for r in runs:
        write_run_record(Path(cfgs[r.name].output_dir), r)
    submit_array([cfgs[r.name] for r in todo], folder=sweep_dir / "jobs", name=str(spec.name), entry=entry)
    return plan
