"""Reading a DCP checkpoint in one process without a process group (export, eval).

`torch.distributed.checkpoint.load(..., no_dist=True)` warns on every call that "torch.distributed
is disabled, unavailable or uninitialized, assuming the intent is to load in a single process",
even when `no_dist=True` says exactly that. Here it is the intent, so that one warning is
silenced for this call only; every other warning (and every other call) still shows.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

_SINGLE_PROCESS_NOTICE = r"torch\.distributed is disabled, unavailable or uninitialized"


def load_in_one_process(state: dict[str, Any], checkpoint: str | Path) -> None:
    """`dcp.load(state, checkpoint_id=checkpoint, no_dist=True)`, in place, without torch's notice."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_NOTICE, category=UserWarning)
        dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
