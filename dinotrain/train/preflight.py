"""What a run checks before it writes anything: the files its config names, and its folder.

`preflight(cfg)` is what `dinotrain launch` calls before it submits; the training entry runs the
same two halves (`check_inputs` first, `run_dir.prepare_run_dir` before the config is saved): a wrong path, a text file given as weights, a folder that is not shards, or a
run folder holding another model ends here in one line (`UserError`), with `config.yaml`
untouched, instead of minutes later as a traceback from the loader or the checkpoint reader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dinotrain.errors import UserError


def _env_int(*names: str) -> int | None:
    for n in names:
        v = os.environ.get(n, "").strip()
        if v:
            return int(v)
    return None


def check_sources(cfg: Any) -> None:
    """Each local data source is a folder written by `dinotrain shards build` (s3:// is read by the loader)."""
    for i, src in enumerate(cfg.data.sources):
        path = str(src.path)
        if "://" in path:
            continue
        key = f"data.sources.{i}.path={path}"
        p = Path(path)
        if not p.exists():
            raise UserError(f"{key}: no such folder: give the output folder of `dinotrain shards build`")
        if not p.is_dir():
            raise UserError(f"{key}: a file, not a folder: give the output folder of `dinotrain shards build`")
        if not (p / "manifest.json").is_file():
            hint = ("it holds images, not shards: build them first with `dinotrain shards build "
                    f"{p} --name NAME --out SHARDS`" if any(p.glob("*.png")) or any(p.glob("*.dcm"))
                    else "give the output folder of `dinotrain shards build`")
            raise UserError(f"{key}: no manifest.json, so not a shard folder: {hint}")


def check_weights(cfg: Any) -> None:
    """model.pretrained / pretrained_head are weights files, and the backbone's width is model.arch's."""
    from dinotrain.models.weights_file import check_weights_source, embed_dim_of

    for key in ("model.pretrained", "model.pretrained_head"):
        value = cfg.model[key.split(".")[1]]
        if value:
            check_weights_source(value, key)
    if cfg.model.pretrained_head:
        check_head_sizes(cfg)
    if cfg.model.pretrained:
        from dinotrain.models import build_backbone

        found = embed_dim_of(cfg.model.pretrained)
        want = build_backbone(cfg.model, device="meta").embed_dim
        if found is not None and found != want:
            from dinotrain.models.vit import ARCHS

            fits = [a for a, kw in ARCHS.items() if kw.get("embed_dim") == found]
            fix = f"set model.arch={fits[0]}" if fits else "set model.arch to the checkpoint's"
            raise UserError(f"model.pretrained {cfg.model.pretrained} holds a ViT of width {found}, "
                            f"model.arch={cfg.model.arch} is {want} wide: {fix}, or give weights of {cfg.model.arch}")


def check_head_sizes(cfg: Any) -> None:
    """model.pretrained_head's prototypes and bottleneck are ssl.head_n_prototypes / head_bottleneck_dim."""
    from dinotrain.models.weights_file import head_sizes_of

    found = head_sizes_of(cfg.model.pretrained_head)
    want = (int(cfg.ssl.head_n_prototypes), int(cfg.ssl.head_bottleneck_dim))
    if found is not None and found != want:
        raise UserError(f"model.pretrained_head {cfg.model.pretrained_head} has {found[0]} prototypes and a "
                        f"bottleneck of {found[1]}, the config {want[0]} and {want[1]}: set "
                        f"ssl.head_n_prototypes={found[0]} ssl.head_bottleneck_dim={found[1]} (RAD-DINO's head: "
                        "65536 and 256), or leave model.pretrained_head unset")


def check_inputs(cfg: Any) -> None:
    """The data sources and weights files the config names (UserError on the first bad one)."""
    check_sources(cfg)
    check_weights(cfg)


def space_warning(output_dir: Path, checkpoint_bytes: int, free: int) -> str | None:
    """One line when the output file system has no room for two checkpoints (the one kept and
    the one being written), else None (pure: the caller measures)."""
    if free >= 2 * checkpoint_bytes:
        return None
    return (f"output_dir {output_dir}: {free / 1e6:.0f} MB free, but a checkpoint of this model takes ~"
            f"{checkpoint_bytes / 1e6:.0f} MB and a run needs room for two (the last complete one and the next): "
            "free space, or choose another output_dir, before a checkpoint write runs out of space")


def preflight(cfg: Any, world_size: int | None = None) -> None:
    """Raise UserError for anything in `cfg` that would fail the run; prepare its folder (see run_dir).

    world_size: processes of the run (default: from WORLD_SIZE / SLURM_NTASKS, as the trainer reads it).
    """
    from dinotrain.train.run_dir import prepare_run_dir

    check_inputs(cfg)
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    world = world_size if world_size is not None else (_env_int("WORLD_SIZE", "SLURM_NTASKS") or 1)
    prepare_run_dir(cfg, rank=rank, world_size=world)
