"""Is this path weights dinotrain can read? Checked from the file's first bytes, before loading.

A text file handed to `torch.load` fails with `KeyError: 101` (its first byte read as a pickle
opcode), a damaged `.safetensors` with "header too large": true, and useless to the user.
`check_weights_source` reads only headers and answers in one line naming the file and the fix.
It accepts what `dinotrain.models.convert.load_backbone` reads: a `.safetensors` file, a torch
file (zip archive, or the legacy pickle format), a Hugging Face folder, or a folder holding
`dinov2.safetensors` / `model.safetensors` (a `dinotrain export`).
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from dinotrain.errors import UserError

WHAT_WORKS = ("give a DINOv2 .pth/.safetensors file, a Hugging Face folder (config.json + model.safetensors) "
              "or a `dinotrain export` folder")
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def _safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a readable .safetensors file (None when its header is sound)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors file"
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            return "its header length is not a safetensors one (damaged, truncated, or another format)"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            return "its header is not the JSON of a safetensors file (damaged, or another format)"
    if not isinstance(header, dict):
        return "its header is not the JSON of a safetensors file (damaged, or another format)"
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    if max(ends, default=0) > size - 8 - n:
        return "it is truncated (its tensors end past the end of the file)"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Why `path` is not a torch file (zip archive of torch.save, or its legacy pickle format)."""
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy format
        return None
    shown = head.decode("utf-8", "replace").strip()[:12]
    return f"it is neither a torch file nor safetensors (it starts with {shown!r})" if shown else "it is empty"


def _folder_problem(path: Path) -> tuple[Path | None, str | None]:
    """(the weights file a folder stands for, or None with the reason)."""
    if (path / "config.json").is_file():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name, None
        return None, "a Hugging Face folder (config.json) without model.safetensors"
    for name in ("dinov2.safetensors", "model.safetensors"):
        if (path / name).is_file():
            return path / name, None
    return None, "a folder without config.json, dinov2.safetensors or model.safetensors"


def tensor_shapes(path: str | Path) -> dict[str, list[int]] | None:
    """Name -> shape of a checked weights source, from a safetensors header alone; None for torch
    files, which cannot be read without loading them."""
    path = Path(path)
    file = _folder_problem(path)[0] if path.is_dir() else path
    if file is None or file.suffix != ".safetensors":
        return None
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: list(v["shape"]) for k, v in header.items() if isinstance(v, dict) and "shape" in v}


def embed_dim_of(path: str | Path) -> int | None:
    """The width of the ViT a weights source holds (the last dim of its cls_token), when its header tells."""
    shapes = [s for k, s in (tensor_shapes(path) or {}).items() if k.endswith("cls_token")]
    return int(shapes[0][-1]) if shapes and shapes[0] else None


# names of a DINO head's last layer: weight-normed (old and parametrized names) or plain
_LAST_LAYER = ("last_layer.weight_v", "last_layer.parametrizations.weight.original1", "last_layer.weight")


def head_sizes_of(path: str | Path) -> tuple[int, int] | None:
    """(prototypes, bottleneck) of a DINO head file, from its safetensors header, when it tells."""
    for k, s in (tensor_shapes(path) or {}).items():
        if k.endswith(_LAST_LAYER) and len(s) == 2:
            return int(s[0]), int(s[1])
    return None


def check_weights_source(path: str | Path, what: str) -> Path:
    """Raise UserError naming `what` (e.g. 'model.pretrained') unless `path` looks like readable weights;
    returns the weights file it stands for."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist: {WHAT_WORKS}")
    file = path
    if path.is_dir():
        file, problem = _folder_problem(path)
        if file is None:
            raise UserError(f"{what} {path} is {problem}: {WHAT_WORKS}")
    if file.suffix == ".safetensors":
        problem = _safetensors_problem(file)
    else:
        problem = _torch_file_problem(file)
    if problem:
        raise UserError(f"{what} {file} is not a weights file: {problem}; {WHAT_WORKS}")
    return file
