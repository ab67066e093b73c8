"""`dinotrain export CHECKPOINT --format hf|dinov2 --out DIR`: hand a backbone to others.

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
                        help="hf: config.json + model.safetensors for transformers.AutoModel; "
                             "dinov2: dinov2.safetensors (DINOv2 naming) + dinov2_config.json")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--head", default=None,
                        help="also export this DINO head file as <out>/dino_head.safetensors")


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.yaml").is_file() and not (p / "model.safetensors").is_file()


def load_run_teacher(run_dir: Path):
    """The teacher backbone of a run: its newest checkpoint, else its latest export."""
    from dinotrain.models.convert import from_dinov2
    from dinotrain.models.vit import build_backbone
    from dinotrain.run_layout import load_teacher

    state_dict, model_cfg = load_teacher(run_dir)
    return from_dinov2(state_dict, build_backbone(model_cfg, device="meta"))


def main(args: argparse.Namespace) -> int:
    from dinotrain.models.convert import load_backbone, load_dino_head, save_dino_head, save_dinov2, to_hf

    src = Path(args.checkpoint)
    if not src.exists():
        print(f"dinotrain export: error: {src} does not exist", file=sys.stderr)
        return 2
    try:
        model = load_run_teacher(src) if _is_run_dir(src) else load_backbone(src)
        out = Path(args.out)
        if args.format == "hf":
            to_hf(model, out)
            written = [out / "config.json", out / "model.safetensors"]
        else:
            written = [save_dinov2(model, out), out / "dinov2_config.json"]
        if args.head:
            written.append(save_dino_head(load_dino_head(args.head), out / "dino_head.safetensors"))
    except (ValueError, FileNotFoundError) as e:
        print(f"dinotrain export: error: {e}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    print(f"exported {src} ({n / 1e6:.1f}M parameters, {model.n_blocks} blocks, dim {model.embed_dim}) "
          f"as {args.format}: " + ", ".join(str(p) for p in written))
    return 0
