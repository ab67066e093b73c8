"""`dinotrain export CHECKPOINT --format hf|dinov2 --out DIR`: hand a backbone to others (a run's
teacher through run_layout.load_teacher: this CLI sits above models/ and run_layout, so their arrows run one way).

CHECKPOINT is a weights file (.safetensors, or a .pth/.pt loadable without pickle) in DINOv2 or
Hugging Face naming, a Hugging Face folder (config.json + model.safetensors), or a run directory
(config.yaml beside ckpt/ or export/): the run's teacher is exported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="weights file, Hugging Face folder, or run directory")
    parser.add_argument("--format", choices=("hf", "dinov2"), default="hf",
                        help="hf: config.json + model.safetensors for transformers.AutoModel and "
                             "preprocessor_config.json for AutoImageProcessor (a run's crop size, mean, std); "
                             "dinov2: dinov2.safetensors (DINOv2 naming) + dinov2_config.json")
    parser.add_argument("--out", required=True, help="output folder (created; one that holds a model is refused "
                        "unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace the model files already in --out")
    parser.add_argument("--head", default=None,
                        help="also export this DINO head file as <out>/dino_head.safetensors")


# files an export writes: a folder holding any of them holds a model
MODEL_FILES = ("config.json", "model.safetensors", "dinov2.safetensors", "dinov2_config.json", "dino_head.safetensors")


def check_out(out: Path, overwrite: bool) -> None:
    """--out is a folder (or can become one) and holds no model, unless --overwrite."""
    from dinotrain.errors import UserError

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder (it is created)")
    held = [n for n in MODEL_FILES if (out / n).exists()]
    if held and not overwrite:
        raise UserError(f"--out {out} already holds a model ({', '.join(held)}): pass --overwrite to replace it, "
                        "or choose another folder")


def _is_run_dir(p: Path) -> bool:
    from dinotrain.run_layout import config_path

    return p.is_dir() and config_path(p).is_file() and not (p / "model.safetensors").is_file()


def load_run_teacher(run_dir: Path):
    """The teacher backbone of a run: its newest checkpoint, else its latest export."""
    from dinotrain.models.convert import from_dinov2
    from dinotrain.models.vit import build_backbone
    from dinotrain.run_teacher import load_teacher

    state_dict, model_cfg = load_teacher(run_dir)
    return from_dinov2(state_dict, build_backbone(model_cfg, device="meta"))


def source_preprocessor(src: Path, model) -> dict | None:
    """The preprocessing that goes with the exported weights: a run's (its crop size, mean and
    std), a Hugging Face folder's own preprocessor_config.json, else None (RAD-DINO's)."""
    import json

    if _is_run_dir(src):
        from omegaconf import OmegaConf

        from dinotrain.config import DataConfig
        from dinotrain.models.convert import run_preprocessor
        from dinotrain.run_layout import config_path

        data = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(config_path(src)).get("data") or {})
        return run_preprocessor(data, model.in_chans)
    own = src / "preprocessor_config.json"
    return json.loads(own.read_text()) if src.is_dir() and own.is_file() else None


def main(args: argparse.Namespace) -> int:
    """Errors are UserError / convert's ValueError: `dinotrain.cli` reports them in one line."""
    from dinotrain.models.convert import load_backbone, load_dino_head, save_dino_head, save_dinov2, to_hf
    from dinotrain.models.weights_file import check_weights_source

    src, out = Path(args.checkpoint), Path(args.out)
    if not src.exists():
        print(f"dinotrain export: error: {src} does not exist", file=sys.stderr)
        return 2
    check_out(out, args.overwrite)  # before the (slow) load
    if args.head:
        check_weights_source(args.head, "--head")
    if _is_run_dir(src):
        model = load_run_teacher(src)
    else:
        check_weights_source(src, "CHECKPOINT")
        model = load_backbone(src)
    if args.format == "hf":
        to_hf(model, out, source_preprocessor(src, model))
        written = [out / "config.json", out / "model.safetensors", out / "preprocessor_config.json"]
    else:
        written = [save_dinov2(model, out), out / "dinov2_config.json"]
    if args.head:
        written.append(save_dino_head(load_dino_head(args.head), out / "dino_head.safetensors"))
    n = sum(p.numel() for p in model.parameters())
    print(f"exported {src} ({n / 1e6:.1f}M parameters, {model.n_blocks} blocks, dim {model.embed_dim}) "
          f"as {args.format}: " + ", ".join(str(p) for p in written))
    return 0
