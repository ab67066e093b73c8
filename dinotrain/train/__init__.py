"""Pretraining: `dinotrain.train.run(cfg)` is the single entry of every run mode.

Imported lazily so that `import dinotrain.train` (e.g. for the CLI's argument parser) does not
pull in torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run"]


def run(cfg: Any) -> dict:
    """Train per `cfg`; see `dinotrain.train.loop.run`."""
    from dinotrain.train.loop import run as _run

    return _run(cfg)
