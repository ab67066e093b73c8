"""The run folder before a run writes to it: writable, and not another run's to overwrite.

A run folder holds `config.yaml` beside its checkpoints and exports; `export`, `eval` and a
resume read the weights through that config. Relaunching the folder with settings that change
the saved tensors (another `model.arch`, head sizes ...) would overwrite `config.yaml` and then
fail deep inside the checkpoint loader, leaving a folder nothing can read. So the differences
are found first, from the saved config alone, and reported in one line with the two ways out:
a new `output_dir`, or `train.resume=false`, which moves the old run aside (never deletes it)
and starts over in the folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dinotrain import run_layout as layout
from dinotrain.config import keys_with
from dinotrain.errors import UserError

log = logging.getLogger("dinotrain.train")

# Keys that shape the tensors of a checkpoint: a resume with other values cannot load it.
SHAPE_KEYS = keys_with("shape")
# Keys of the loader's saved position: they must match when the process count is the same
# (with another process count the loader restarts its order, see dinotrain.train.loop).
DATA_KEYS = keys_with("data")
# What a previous run left in its folder (moved aside together by train.resume=false).
RUN_FILES = (layout.CKPT, layout.EXPORT, layout.METRICS, layout.EVAL, layout.CONFIG)
REPLACED = "replaced"


def _value(cfg: Any, key: str) -> Any:
    v = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if key == "data.sources" and v is not None:
        # the loader's identity of a source: name, subset, split and selection (weights may change)
        return [(s.get("name"), s.get("max_samples"), s.get("split", "train"), s.get("selection")) for s in v]
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def _with_defaults(saved: Any) -> Any:
    """A config.yaml written before a key existed ran with that key's default: fill it in, so that
    an older run is not refused for a key it never had (an unknown old key is left alone)."""
    from omegaconf.errors import OmegaConfBaseException

    from dinotrain.config import schema

    try:
        return OmegaConf.merge(schema(), saved)
    except OmegaConfBaseException:
        return saved


def _checkpoint_world_size(out: Path) -> int | None:
    from dinotrain.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    try:
        return int(json.loads((ckpt / "meta.json").read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holds_weights(out: Path) -> bool:
    """A previous run left checkpoints or exports here (what `export` / `eval` / a resume read)."""
    from dinotrain.train.checkpoint import latest_checkpoint

    return latest_checkpoint(out) is not None or (out / layout.EXPORT).is_dir()


def differing_keys(saved: Any, cfg: Any, world_size: int | None) -> list[str]:
    """Keys whose values in `cfg` keep the run saved with `saved` from resuming (pure)."""
    keys = list(SHAPE_KEYS) + (list(DATA_KEYS) if world_size is not None else [])
    return [k for k in keys if _value(saved, k) != _value(cfg, k)]


def _shown(cfg: Any, key: str) -> str:
    v = _value(cfg, key)
    if key == "data.sources":
        return "[" + ", ".join(f"{n}" + (f" max_samples={m}" if m is not None else "") + (f" selection={sel}" if sel else "")
                               for n, m, _, sel in v) + "]"
    return str(v)


def check_writable(out: Path) -> None:
    """output_dir is (or can become) a folder this process may write in."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"output_dir={out}: {probe} is a file, not a folder: choose another output_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output_dir={out}: {probe} is not writable by this user: choose another output_dir "
                        "or fix its permissions")


# the folders and files a run writes into, beside output_dir itself
WRITTEN = (layout.CKPT, layout.EXPORT, layout.METRICS)


def check_written_paths(out: Path) -> None:
    """Each existing folder the run writes into (ckpt/, export/) takes a new file, and an existing
    metrics.jsonl opens for appending: a read-only mount or permissions on one of them end here, in
    one line, not after the first steps. Tried for real (root passes permission checks that a
    read-only mount still refuses), with probe files named by host and pid (ranks never collide)."""
    import socket

    for name in WRITTEN:
        path = out / name
        try:
            if path.is_dir():
                probe = path / f".write_probe.{socket.gethostname()}.{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            elif path.is_file():
                with open(path, "a"):
                    pass
        except OSError as e:
            raise UserError(f"output_dir {out}: {path} is not writable ({e.strerror}): the run writes there; "
                            "fix its permissions or mount, or choose another output_dir") from None


def check_resumable(cfg: Any, world_size: int | None) -> None:
    """Raise UserError when output_dir holds a run these settings cannot resume (nothing is written)."""
    out = Path(str(cfg.output_dir))
    saved_path = layout.config_path(out)
    if not cfg.train.resume or not saved_path.is_file() or not holds_weights(out):
        return
    try:
        saved = OmegaConf.load(saved_path)
    except Exception as e:  # damaged YAML: we cannot tell what the weights are
        raise UserError(f"{saved_path} cannot be read ({str(e).splitlines()[0]}): use a new output_dir, or "
                        "train.resume=false to set this run aside and start over") from None
    saved = _with_defaults(saved)
    same_world = world_size is not None and _checkpoint_world_size(out) == world_size
    diff = differing_keys(saved, cfg, world_size if same_world else None)
    if diff:
        changes = ", ".join(f"{k}={_shown(saved, k)} (now {_shown(cfg, k)})" for k in diff)
        raise UserError(f"output_dir {out} holds a run with {changes}: its checkpoints cannot be resumed with "
                        f"these settings; use a new output_dir, or train.resume=false to move that run to "
                        f"{out / REPLACED}/ and start over")


def set_aside(out: Path) -> Path | None:
    """Move a previous run's files to `out/replaced/<UTC time>/` (train.resume=false); return that folder."""
    present = [out / name for name in RUN_FILES if (out / name).exists()]
    if not present or not holds_weights(out):
        return None
    dest = out / REPLACED / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
        n += 1
    dest.mkdir(parents=True)
    for p in present:
        p.rename(dest / p.name)
    return dest


def prepare_run_dir(cfg: Any, rank: int = 0, world_size: int | None = None) -> None:
    """Before the run writes: output_dir writable; resumable (train.resume) or the old run set aside.

    Every rank checks (the same files give the same verdict, so all ranks stop together);
    only rank 0 moves files (the others only read when train.resume, when nothing is moved).
    """
    out = Path(str(cfg.output_dir))
    check_writable(out)
    check_written_paths(out)
    check_resumable(cfg, world_size)
    if not cfg.train.resume and rank == 0:
        moved = set_aside(out)
        if moved is not None:
            log.warning("train.resume=false: the previous run in %s was moved to %s", out, moved)
