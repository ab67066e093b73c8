"""`dinotrain verify RUN`: the state of each checkpoint of a run, and which one a resume, `eval`
and `export` would use. Reads every file once (sizes and CRC-32s against each manifest).

Exit status: 0 when every checkpoint is complete, 1 when one is broken or partial (resume,
eval and export then use the newest complete one, named on the last line), 2 on a user error.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder (the output_dir of `dinotrain train`)")
    parser.add_argument("--quick", action="store_true", help="compare file sizes only (no full read)")


def _lines(run: Path, checksums: bool) -> tuple[list[str], bool]:
    from dinotrain.ckpt_manifest import LEGACY, check_folder
    from dinotrain.run_layout import checkpoint_dirs, ckpt_root

    lines, clean = [], True
    for _, path in checkpoint_dirs(run):
        state = check_folder(path, checksums)
        rel = path.relative_to(run)
        if state.status == LEGACY:
            lines.append(f"{rel}  legacy (written before manifests: meta.json and .metadata present, data unchecked)")
        elif state.usable:
            what = "checksums match" if checksums else "sizes match"
            lines.append(f"{rel}  complete ({state.n_files} files, {state.n_bytes / 1e6:.1f} MB, {what})")
        else:
            clean = False
            lines.append(f"{rel}  BROKEN: {state.reason}")
    for tmp in sorted(ckpt_root(run).glob(".tmp_step_*")):
        clean = False
        lines.append(f"{tmp.relative_to(run)}  partial write (a run stopped while writing it; the next run removes it)")
    return lines, clean


def main(args: argparse.Namespace) -> int:
    from dinotrain.errors import UserError
    from dinotrain.run_layout import LOCK, config_path, export_dir, usable_checkpoint

    run = Path(args.run)
    if not config_path(run).is_file():
        raise UserError(f"{run}: no config.yaml: give the output_dir of a `dinotrain train` run")
    lines, clean = _lines(run, checksums=not args.quick)
    for line in lines or ["no checkpoints under ckpt/"]:
        print(line)
    if (run / LOCK).is_file():
        print(f"{LOCK}: {(run / LOCK).read_text().strip()}")
    chosen = usable_checkpoint(run) if not args.quick else None
    exported = export_dir(run, None) / "dinov2.safetensors"
    if chosen is not None:
        print(f"resume, eval and export use: {chosen.relative_to(run)}")
    elif not args.quick:
        fallback = f"{exported.relative_to(run)} (eval and export)" if exported.is_file() else "nothing"
        print(f"no complete checkpoint: a resume starts over; fallback: {fallback}")
    return 0 if clean else 1
