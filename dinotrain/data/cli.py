"""`dinotrain data preview [CONFIG] [overrides] --out DIR [--batches N]`: look at what training sees.

Writes DIR/crops.png (one row per sample: its global crops with the iBOT mask tinted red, then
its local crops) and DIR/batch.json (shapes, dtypes, value ranges, mask ratios, applied
augmentations, sample keys, and the effective dataset).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MAX_ROWS = 32  # rows of crops.png (samples), whatever the batch size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dinotrain.config_args import add_config_arguments

    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub.add_parser("preview", help="write crops.png and batch.json for the first batches of a config",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--batches", type=int, default=1, help="how many batches to draw (default 1)")


def _summary(t) -> dict:
    f = t.float()
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "min": float(f.min()) if t.numel() else None, "max": float(f.max()) if t.numel() else None,
            "mean": float(f.mean()) if t.numel() else None, "std": float(f.std()) if t.numel() > 1 else None}


def describe_batch(batch: dict, patch: int) -> dict:
    """The JSON-able description of one batch written to batch.json."""
    from dinotrain.data.augment import BLUR, INTENSITY, SOLAR, X0, X1

    masks = batch["masks"]
    params = batch["aug_params"]
    return {
        "global_crops": _summary(batch["global_crops"]),
        "local_crops": _summary(batch["local_crops"]),
        "masks": {"shape": list(masks.shape), "dtype": "bool", "patch_size": patch,
                  "ratio_per_crop": [round(float(r), 4) for r in masks.float().mean(1)],
                  "n_masked_patches": int(batch["n_masked_patches"]), "upperbound": int(batch["upperbound"])},
        "keys": batch["keys"],
        "dataset": batch["dataset"],
        "modality": batch["modality"],
        "source": batch["source"],
        "augment": {
            "blur_applied": params[:, :, BLUR].astype(bool).tolist(),
            "solarize_applied": params[:, :, SOLAR].astype(bool).tolist(),
            "flipped": (params[:, :, X0] > params[:, :, X1]).tolist(),
            "intensity_jitter_applied": params[:, :, INTENSITY].astype(bool).tolist(),
        },
    }


def _to_u8(crop, mean: float, std: float):
    """[C, H, W] normalised tensor -> HxWx3 uint8 (grayscale shown as gray)."""
    import numpy as np

    x = (crop.float().cpu().numpy() * std + mean).clip(0, 1)
    x = np.repeat(x[:1], 3, 0) if x.shape[0] == 1 else x[:3]
    return (x.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def crops_image(batches: list[dict], patch: int, mean: float, std: float):
    """A PIL image: one row per sample, global crops (mask in red) then local crops."""
    import numpy as np
    from PIL import Image

    rows = []
    for b in batches:
        n = len(b["keys"])
        ng, nl = b["global_crops"].shape[0] // n, (b["local_crops"].shape[0] // n if b["local_crops"].numel() else 0)
        for i in range(n):
            tiles = []
            for k in range(ng):
                img = _to_u8(b["global_crops"][k * n + i], mean, std).astype(np.float32)
                side = img.shape[0] // patch
                m = b["masks"][k * n + i].numpy().reshape(side, side)
                m = np.kron(m, np.ones((patch, patch), dtype=bool))
                img[m] = 0.5 * img[m] + 0.5 * np.array([255, 0, 0], dtype=np.float32)
                tiles.append(img.astype(np.uint8))
            tiles += [_to_u8(b["local_crops"][k * n + i], mean, std) for k in range(nl)]
            rows.append(tiles)
            if len(rows) >= MAX_ROWS:
                break
    gap = 4
    height = max(t.shape[0] for t in rows[0])
    width = max(sum(t.shape[1] + gap for t in r) for r in rows)
    canvas = Image.new("RGB", (width, len(rows) * (height + gap)), (32, 32, 32))
    for r, tiles in enumerate(rows):
        x = 0
        for t in tiles:
            canvas.paste(Image.fromarray(t), (x, r * (height + gap)))
            x += t.shape[1] + gap
    return canvas


def main(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "preview":
        print("dinotrain data: choose an action: preview (see `dinotrain data preview --help`)", file=sys.stderr)
        return 2
    from dinotrain.config import to_yaml
    from dinotrain.config_args import resolve_config

    cfg = resolve_config(args)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    if args.batches < 1:
        print("dinotrain data preview: --batches must be >= 1", file=sys.stderr)
        return 2
    from dinotrain.data.loader import build_train_loader

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loader = build_train_loader(cfg)
    batches = [next(loader) for _ in range(args.batches)]
    patch = int(cfg.model.patch_size)
    crops_image(batches, patch, cfg.data.mean, cfg.data.std).save(out / "crops.png")
    report = {"batches": [describe_batch(b, patch) for b in batches], "dataset": loader.stats(),
              "device": loader.device}
    (out / "batch.json").write_text(json.dumps(report, indent=1))
    loader.close()
    print(f"dinotrain data preview: wrote {out / 'crops.png'} and {out / 'batch.json'}", file=sys.stderr)
    return 0
