"""Atomic file writes: the one way the project replaces a file.

Content goes to a unique temporary sibling (pid + random suffix: parallel writers of one path,
e.g. evaluations sharing a feature cache, never collide), which is then renamed over the target.
A reader never sees half a file, and a killed writer leaves at most a hidden `.*.tmp` file.
Every file gets the mode a plain `open(path, "w")` would give (0666 less the umask: 0644 by
default), whatever the writer used: safetensors creates its files 0600, which a group sharing a
model cannot read.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else by the
    set-and-restore `os.umask` is limited to."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """`obj` as JSON (keyword arguments go to `json.dumps`), ending with a newline."""
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def keep_jsonl_until(path: str | Path, last_step: int) -> None:
    """Drop the lines of a metrics.jsonl whose `step` is after `last_step`: a resumed run redoes
    those steps and logs them again, so each step stays in the file once."""
    path = Path(path)
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    write_text(path, "".join(ln + "\n" for ln in kept))
