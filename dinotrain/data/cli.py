"""`dinotrain data preview [CONFIG] [overrides] --out DIR [--batches N]`: look at what training sees.

Writes DIR/crops.png (one row per sample: its global crops with the iBOT mask tinted red, then
its local crops packed beside them; each crop captioned with its kind, size in pixels, area
fraction of the source image, iBOT mask ratio, and flip/blur/solarize when applied) and DIR/batch.json (shapes, dtypes, value ranges, mask ratios, applied
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
    from dinotrain.data.augment import Col

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
            "blur_applied": params[:, :, Col.BLUR].astype(bool).tolist(),
            "solarize_applied": params[:, :, Col.SOLAR].astype(bool).tolist(),
            "flipped": (params[:, :, Col.X0] > params[:, :, Col.X1]).tolist(),
            "intensity_jitter_applied": params[:, :, Col.INTENSITY].astype(bool).tolist(),
        },
    }


def _to_u8(crop, mean: float, std: float):
    """[C, H, W] normalised tensor -> HxWx3 uint8 (grayscale shown as gray)."""
    import numpy as np

    x = (crop.float().cpu().numpy() * std + mean).clip(0, 1)
    x = np.repeat(x[:1], 3, 0) if x.shape[0] == 1 else x[:3]
    return (x.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _caption(params, kind: str, k: int, side: int, mask_ratio: float | None) -> tuple[str, str]:
    """Two short lines under a crop: what it is, then what was done to it."""
    from dinotrain.data.augment import Col

    area = abs(float(params[Col.Y1] - params[Col.Y0]) * float(params[Col.X1] - params[Col.X0]))
    flags = [f for f, on in (("flip", params[Col.X0] > params[Col.X1]), ("blur", params[Col.BLUR]), ("sol", params[Col.SOLAR])) if on]
    second = f"area {area:.2f}" + (f" mask {mask_ratio:.2f}" if mask_ratio is not None else "")
    return f"{kind} {k + 1} {side}px", " ".join([second, *flags])


def _sample_tiles(b: dict, i: int, patch: int, mean: float, std: float) -> tuple[str, list, list]:
    """(row title, global tiles, local tiles) of sample i; a tile is (HxWx3 uint8, caption lines)."""
    import numpy as np

    n = len(b["keys"])
    ng = b["global_crops"].shape[0] // n
    nl = b["local_crops"].shape[0] // n if b["local_crops"].numel() else 0
    params = b["aug_params"][i]
    globals_, locals_ = [], []
    for k in range(ng):
        img = _to_u8(b["global_crops"][k * n + i], mean, std).astype(np.float32)
        side = img.shape[0] // patch
        m = b["masks"][k * n + i].numpy().reshape(side, side)
        ratio = float(m.mean())
        m = np.kron(m, np.ones((patch, patch), dtype=bool))
        img[m] = 0.5 * img[m] + 0.5 * np.array([255, 0, 0], dtype=np.float32)
        globals_.append((img.astype(np.uint8), _caption(params[k], "global", k, img.shape[0], ratio)))
    for k in range(nl):
        img = _to_u8(b["local_crops"][k * n + i], mean, std)
        locals_.append((img, _caption(params[ng + k], "local", k, img.shape[0], None)))
    title = f"{b['dataset'][i]} / {b['modality'][i]}  key {b['keys'][i]}  (red: iBOT-masked patches)"
    return title, globals_, locals_


GAP, LINE = 6, 12  # pixels between tiles, and per caption line


def _row_layout(globals_: list, locals_: list) -> tuple[list[tuple[int, int]], int, int]:
    """Tile positions (x, y) of one row: globals side by side, then the locals stacked in columns
    as high as a global crop, so small crops fill the row instead of leaving it half empty."""
    cap = 2 * LINE
    height = max(t.shape[0] for t, _ in globals_ + locals_) + cap
    pos, x = [], 0
    for t, _ in globals_:
        pos.append((x, 0))
        x += t.shape[1] + GAP
    if locals_:
        lh, lw = locals_[0][0].shape[0] + cap, locals_[0][0].shape[1]
        per_col = max(1, round((height + GAP) / (lh + GAP)))
        height = max(height, per_col * (lh + GAP) - GAP)
        cols = -(-len(locals_) // per_col)
        for j in range(len(locals_)):
            r, col = divmod(j, cols)  # row by row: local 1, 2, 3 ... read left to right
            pos.append((x + col * (lw + GAP), r * (lh + GAP)))
        x += cols * (lw + GAP)
    return pos, x, height


def crops_image(batches: list[dict], patch: int, mean: float, std: float):
    """A PIL image: one row per sample, global crops (iBOT mask in red) then local crops packed beside
    them, each captioned with its kind, size, area fraction of the source, mask ratio and augmentations."""
    from PIL import Image, ImageDraw, ImageFont

    samples = [_sample_tiles(b, i, patch, mean, std) for b in batches for i in range(len(b["keys"]))][:MAX_ROWS]
    layouts = [_row_layout(g, loc) for _, g, loc in samples]
    title_h = LINE + 4
    width = max(max(w for _, w, _ in layouts), 320)
    heights = [title_h + h + GAP for _, _, h in layouts]
    canvas = Image.new("RGB", (width, sum(heights)), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=10)
    y0 = 0
    for (title, g, loc), (pos, _, _), h in zip(samples, layouts, heights):
        draw.text((2, y0 + 2), title, fill=(235, 235, 235), font=font)
        for (tile, caption), (x, y) in zip(g + loc, pos):
            top = y0 + title_h + y
            canvas.paste(Image.fromarray(tile), (x, top))
            for j, text in enumerate(caption):
                draw.text((x + 1, top + tile.shape[0] + 1 + j * LINE), text, fill=(200, 200, 200), font=font)
        y0 += h
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
