"""The laptop study's pretraining runs, through the real launcher; its random-init baseline is
`dinotrain.train.initial.save_initial_teacher` (the run's own step-0 network).

Runs go through `launch` exactly as a user's would: the data-scaling sweep with
`launch.sweeps.sweep_run.plan_and_submit` (one SLURM job array) or, without SLURM, one local job per
run; the continual stages with `launch.jobs.submit.submit_run`. While the study waits it echoes the
jobs' own logs (the trainer's and the evaluation's progress bars) to its stderr.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dinotrain.config import keys_with
from launch.jobs import runstate
from launch.jobs import status as run_status
from launch.jobs.runstate import State


def slurm_state() -> tuple[bool, str]:
    """Whether SLURM can take jobs here, and why (said in the plan and in report.md)."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return False, "no sbatch/squeue on PATH"
    try:
        ok = subprocess.run(["squeue", "-h"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if ok:
        return True, "a SLURM controller answers squeue"
    return False, "sbatch is installed but no SLURM controller answers squeue (start slurmctld + slurmd to use it)"


def slurm_cpus() -> int:
    """CPUs of the smallest SLURM node (a job asking for more would pend forever)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=30)
        counts = [int(x.strip().rstrip("+")) for x in out.stdout.split() if x.strip().rstrip("+").isdigit()]
        return max(1, min(counts)) if counts else 1
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return 1


def run_config(base: str, overrides: list[str], sources: list[dict[str, Any]], output_dir: Path) -> DictConfig:
    """A validated run config: the recipe, the study's overrides, these shard sets, this folder."""
    from dinotrain.config import load_config, validate

    cfg = load_config(base, overrides)
    cfg = OmegaConf.merge(cfg, {"data": {"sources": sources}})
    cfg.output_dir = str(output_dir)
    validate(cfg)
    return cfg


def global_batch(cfg: DictConfig) -> int:
    """Images per optimiser step over every process of a run."""
    return int(cfg.data.batch_size_per_gpu) * int(cfg.launch.nodes) * int(cfg.launch.tasks_per_node)


def training_part(cfg: DictConfig) -> dict[str, Any]:
    """What decides the learned weights: the config without where/how the run is launched."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for key in keys_with("not_training"):  # where it runs, what is evaluated, its folder, its logging
        node, *rest = key.split(".")
        if rest:
            d.get(node, {}).pop(rest[0], None)
        else:
            d.pop(node, None)
    return d


# ----------------------------------------------------------------------------- waiting
class LogEcho:
    """Echo what the jobs of some runs append to their stderr logs (progress bars included)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.offsets: dict[Path, int] = {}

    def skip(self, run_dirs: list[Path]) -> None:
        """Do not replay what these runs logged before (a resumed study)."""
        for d in run_dirs:
            for path in self._logs(d):
                self.offsets[path] = path.stat().st_size

    @staticmethod
    def _logs(run_dir: Path) -> list[Path]:
        sub = runstate.read_submission(run_dir)
        if not sub or not sub.get("logs"):
            return []
        return sorted(Path(sub["logs"]).glob("*_log.err"))

    def poll(self, run_dirs: list[Path]) -> None:
        for d in run_dirs:
            for path in self._logs(d):
                start = self.offsets.get(path, 0)
                try:
                    with path.open("rb") as f:
                        f.seek(start)
                        chunk = f.read()
                except OSError:
                    continue
                if chunk:
                    self.offsets[path] = start + len(chunk)
                    self.stream.write(chunk.decode("utf-8", "replace"))
                    self.stream.flush()


def wait_done(run_dirs: list[Path], echo: LogEcho | None, poll_s: float = 3.0) -> None:
    """Block until every run is done; a failed run raises with its error and log folder."""
    while True:
        states = run_status.states_of(run_dirs)
        if echo is not None:
            echo.poll(run_dirs)
        failed = [s for s in states if s.state == State.FAILED]
        if failed:
            s = failed[0]
            sub = runstate.read_submission(s.run_dir) or {}
            raise RuntimeError(f"run {s.run_dir.name} failed: {s.detail or 'see its log'} (logs: {sub.get('logs')})")
        if all(s.state == State.DONE for s in states):
            return
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- submitting
def submit_sweep(spec: DictConfig, cluster: str, echo: LogEcho | None) -> list[Path]:
    """The sweep's runs: one job array on SLURM (returns at once), else one local job after another."""
    from launch.sweeps.sweep import expand, run_dirs, write_run_record
    from launch.sweeps.sweep import run_config as sweep_run_config
    from launch.sweeps.sweep_run import plan_and_submit

    if cluster == "slurm":
        plan = plan_and_submit(spec)
        dirs = run_dirs(spec.output_dir)
        if echo is not None:
            echo.skip([d for d in dirs if d.name in plan.skip])
        return dirs
    from launch.jobs.submit import submit_run

    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(OmegaConf.to_yaml(spec, resolve=True))
    dirs = []
    for r in expand(spec):
        cfg = sweep_run_config(spec, r)
        d = Path(cfg.output_dir)
        write_run_record(d, r)
        dirs.append(d)
        # the local executor has no queue: one training at a time on a small machine
        if run_status.run_state(d, None).state != State.DONE:
            submit_run(cfg)
            wait_done([d], echo)
        elif echo is not None:
            echo.skip([d])
    return dirs


def submit(cfg: DictConfig, echo: LogEcho | None = None) -> Path:
    """One run through the launcher, unless it is already done (a rerun of the study resumes)."""
    from launch.jobs.submit import submit_run

    d = Path(cfg.output_dir)
    state = run_status.run_state(d, run_status.queue.squeue_states()).state
    if state not in (State.DONE, State.PENDING, State.RUNNING, State.REQUEUED):
        submit_run(cfg)
    elif state == State.DONE and echo is not None:
        echo.skip([d])
    return d
