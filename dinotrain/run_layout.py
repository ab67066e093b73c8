"""What a run directory holds and where.

    config.yaml                 the resolved config
    metrics.jsonl               one JSON line per logged step
    ckpt/step_0000100/          DCP checkpoint (complete when its manifest.json matches, see ckpt_manifest)
    export/step_0000100/        teacher export (hf/, dinov2.safetensors, dino_head.safetensors)
    export/latest/              a copy of the newest export
    eval/                       `dinotrain eval` results of the run (written by launch's jobs)
    train.lock                  who trains here now (dinotrain.train.run_lock)
    job.json, job_status.json   what launch submitted and how the task got on (launch.jobs.runstate)
    run.json                    a sweep run's record (launch.sweeps.sweep)

Every reader and writer takes these names from here, so no path is spelled twice. The module
stays a leaf of the library: it imports nothing of dinotrain's but the checkpoint manifest
(dinotrain.config reads these names; reading a run's teacher, which needs the models, is
dinotrain.run_teacher's).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

_STEP_DIR = re.compile(r"^step_(\d{7,})$")

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CKPT = "ckpt"
EXPORT = "export"
LATEST = "latest"
EVAL = "eval"
LOCK = "train.lock"
SUBMISSION = "job.json"
JOB_STATUS = "job_status.json"
RUN_RECORD = "run.json"


def config_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / CONFIG


def metrics_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / METRICS


def ckpt_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CKPT


def step_dir(output_dir: str | Path, step: int) -> Path:
    return ckpt_root(output_dir) / f"step_{step:07d}"


def export_dir(output_dir: str | Path, step: int | None) -> Path:
    """`export/step_NNNNNNN` of a step, or `export/latest` for None."""
    root = Path(output_dir) / EXPORT
    return root / (LATEST if step is None else f"step_{step:07d}")


def is_complete(path: Path, checksums: bool = False) -> bool:
    """A checkpoint folder whose manifest matches (sizes; CRC-32s too with `checksums`), or a
    legacy one (written before manifests) holding meta.json and .metadata."""
    from dinotrain.ckpt_manifest import check_folder

    return check_folder(path, checksums).usable


def checkpoint_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every `ckpt/step_*` folder of a run, complete or not, oldest first."""
    root = ckpt_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (manifest sizes match), oldest first."""
    return [(s, p) for s, p in checkpoint_dirs(output_dir) if is_complete(p)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def usable_checkpoint(output_dir: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that passes the full check (sizes and checksums): what resume, eval
    and export load. Each broken newer one is skipped with one line to `warn`."""
    from dinotrain.ckpt_manifest import check_folder

    out = Path(output_dir)
    skipped: list[str] = []
    for _, path in reversed(checkpoint_dirs(out)):
        state = check_folder(path, checksums=True)
        if state.usable:
            for line in skipped:
                if warn is not None:
                    warn(f"{line}; using {path.relative_to(out)}")
            return path
        skipped.append(f"{path.relative_to(out)} is broken ({state.reason}): skipped")
    for line in skipped:
        if warn is not None:
            warn(f"{line}; no complete checkpoint is left")
    return None


def step_of(path: Path) -> int:
    m = _STEP_DIR.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not a ckpt/step_NNNNNNN folder")
    return int(m.group(1))
