"""How to read a run's teacher without the trainer: what `dinotrain eval` and `dinotrain export`
use. It needs torch's checkpoint reader and the models, not the training loop; the names of the
run folder's files come from dinotrain.run_layout (a leaf, so that the config can read them)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dinotrain.run_layout import config_path, export_dir, step_of, usable_checkpoint


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _load_export(run_dir: Path, exported: Path) -> dict[str, Any]:
    """export/latest/dinov2.safetensors, or one line naming it when it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(exported))
    except (SafetensorError, OSError, ValueError) as e:
        raise FileNotFoundError(
            f"{exported} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}): it is truncated "
            f"or damaged and {run_dir} has no complete checkpoint under ckpt/; export it again from a checkpoint, "
            "or retrain") from None


def load_teacher(run_dir: str | Path, say: Callable[[str], None] | None = _say) -> tuple[dict[str, Any], Any]:
    """The teacher backbone of a run (newest complete checkpoint, else `export/latest`), as a
    plain CPU state dict in DINOv2 naming, and the run's `model` config section.

    `say` gets one line naming the step used (the first line `eval` and `export` print), after
    one line per broken newer checkpoint skipped; None keeps quiet.
    No process group needed; raises FileNotFoundError naming what is missing.
    """
    from omegaconf import OmegaConf

    from dinotrain.dcp_local import load_in_one_process
    from dinotrain.models import build_backbone
    from dinotrain.models.convert import sub_state_dict

    say = say or (lambda _line: None)
    run_dir = Path(run_dir)
    cfg_path = config_path(run_dir)
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: give the output_dir of a `dinotrain train` run")
    model_cfg = OmegaConf.load(cfg_path).model
    ckpt = usable_checkpoint(run_dir, warn=lambda line: say(f"warning: {run_dir}: {line}"))
    if ckpt is not None:
        say(f"{run_dir}: using the teacher of step {step_of(ckpt)} ({ckpt.relative_to(run_dir)})")
        backbone = build_backbone(model_cfg, device="cpu")
        sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        load_in_one_process({"teacher": sd}, ckpt)  # no process group here: torch's notice about it is silenced
        return sub_state_dict(sd, "backbone."), model_cfg
    exported = export_dir(run_dir, None) / "dinov2.safetensors"
    if exported.is_file():
        sd = _load_export(run_dir, exported)
        say(f"{run_dir}: no complete checkpoint; using the teacher of {exported.relative_to(run_dir)}")
        return sd, model_cfg
    raise FileNotFoundError(
        f"{run_dir}: no complete checkpoint under ckpt/ and no export/latest/dinov2.safetensors: "
        "train longer than train.checkpoint_every steps, or check the path"
    )
