"""What a run directory holds and where, and how to read its teacher without the trainer.

    config.yaml                 the resolved config
    metrics.jsonl               one JSON line per logged step
    ckpt/step_0000100/          DCP checkpoint (complete when meta.json and .metadata exist)
    export/step_0000100/        teacher export (hf/, dinov2.safetensors, dino_head.safetensors)
    export/latest/              a copy of the newest export

`load_teacher` is what `dinotrain eval` and `dinotrain export` use to read a run: it needs
torch's checkpoint reader, not the training loop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def ckpt_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "ckpt"


def step_dir(output_dir: str | Path, step: int) -> Path:
    return ckpt_root(output_dir) / f"step_{step:07d}"


def export_dir(output_dir: str | Path, step: int | None) -> Path:
    """`export/step_NNNNNNN` of a step, or `export/latest` for None."""
    root = Path(output_dir) / "export"
    return root / ("latest" if step is None else f"step_{step:07d}")


def is_complete(path: Path) -> bool:
    return (path / "meta.json").is_file() and (path / ".metadata").is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = ckpt_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def load_teacher(run_dir: str | Path) -> tuple[dict[str, Any], Any]:
    """The teacher backbone of a run (newest complete checkpoint, else `export/latest`), as a
    plain CPU state dict in DINOv2 naming, and the run's `model` config section.

    No process group needed; raises FileNotFoundError naming what is missing.
    """
    from omegaconf import OmegaConf

    from dinotrain.dcp_local import load_in_one_process
    from dinotrain.models import build_backbone
    from dinotrain.models.convert import sub_state_dict

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: give the output_dir of a `dinotrain train` run")
    model_cfg = OmegaConf.load(cfg_path).model
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        backbone = build_backbone(model_cfg, device="cpu")
        sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        load_in_one_process({"teacher": sd}, ckpt)  # no process group here: torch's notice about it is silenced
        return sub_state_dict(sd, "backbone."), model_cfg
    exported = export_dir(run_dir, None) / "dinov2.safetensors"
    if exported.is_file():
        from safetensors.torch import load_file

        return load_file(str(exported)), model_cfg
    raise FileNotFoundError(
        f"{run_dir}: no complete checkpoint under ckpt/ and no export/latest/dinov2.safetensors: "
        "train longer than train.checkpoint_every steps, or check the path"
    )
