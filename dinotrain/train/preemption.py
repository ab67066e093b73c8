"""Stopping at a step boundary when the cluster or the user asks: SIGTERM, SIGUSR2, SIGINT.

A signal only sets a flag here; the step in flight finishes. At each step boundary every rank
contributes its flag to one all-reduce (MAX), so all ranks see the same verdict at the same
step even when the signal reached only some of them, and stop together after one checkpoint
of that step (the checkpoint manager writes it). Nothing of the step is lost or redone.

After that checkpoint the signal goes on to the handler that was installed before ours:
inside a submitit job that is submitit's, whose USR2 handler calls the task's `checkpoint()`
and requeues the job (rank 0). submitit sends SIGTERM before USR2 on preemption, and SIGTERM
alone is how `scancel` and SLURM's own preemption start: so under submitit a SIGTERM stop
waits (up to `USR2_WAIT_S`) for the USR2 that decides on a requeue, or for SLURM's kill.
Elsewhere the run ends with `TrainingStopped` ("saved at step N"; the CLI exits 0).

SIGINT (Ctrl-C) stops the same way once; a second SIGINT aborts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

# a code per signal, higher wins when ranks saw different ones: USR2 asks for a requeue
CODES = {signal.SIGINT: 1, signal.SIGTERM: 2, signal.SIGUSR2: 3}
USR2_WAIT_S = 60.0


class TrainingStopped(Exception):
    """The run stopped early on a signal, after a checkpoint of its last step (not an error)."""

    def __init__(self, step: int, signal_name: str, checkpoint: str):
        super().__init__(f"stopped by {signal_name}: saved at step {step} ({checkpoint}); run the same command "
                         "again to resume from it")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


def _chains(handler: Any) -> bool:
    """A Python handler installed before ours that wants the signal (submitit's), not a default."""
    return callable(handler) and handler is not signal.default_int_handler


class StopSignals:
    """Flags set by SIGTERM / SIGUSR2 / SIGINT; `agreed()` is the collective verdict of a step."""

    def __init__(self) -> None:
        self.received: set[int] = set()
        self.previous: dict[int, Any] = {}
        self.interrupts = 0

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only (a trainer in a worker thread)
        for sig in CODES:
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt  # the second Ctrl-C: abort without waiting for the step
        if signum not in self.received:
            again = "; press Ctrl-C again to abort without it" if signum == signal.SIGINT else ""
            # os.write, not print: a handler that runs while the main thread is inside a print to
            # stderr would re-enter its buffer ("reentrant call")
            os.write(2, f"{signal.Signals(signum).name} received: stopping after the current step, with a "
                        f"checkpoint of it{again}\n".encode())
        self.received.add(signum)
        prev = self.previous.get(signum)
        if signum == signal.SIGTERM and _chains(prev):
            prev(signum, frame)  # submitit only logs it ("Bypassing signal SIGTERM"); its USR2 decides

    def local_code(self) -> int:
        return max((CODES[s] for s in self.received), default=0)

    def agreed(self, device: torch.device) -> int:
        """The highest signal code of any rank (0: none). A collective: every rank, every step."""
        import torch.distributed as dist

        code = torch.tensor([self.local_code()], dtype=torch.int32, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return int(code.item())

    def hand_over(self, code: int, wait_s: float = USR2_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> None:
        """After the stop checkpoint: give USR2 to the handler that was there before ours (under
        submitit: rank 0 requeues the job and exits). Returns when there is none to call."""
        prev = self.previous.get(signal.SIGUSR2)
        if not _chains(prev):
            return
        deadline = time.monotonic() + wait_s
        # only SIGTERM announces one: SLURM's USR2 (requeue) or its kill follows; Ctrl-C does not
        while code == CODES[signal.SIGTERM] and signal.SIGUSR2 not in self.received and time.monotonic() < deadline:
            sleep(0.2)  # a signal wakes it
        if code == CODES[signal.SIGUSR2] or signal.SIGUSR2 in self.received:
            prev(signal.SIGUSR2, None)


def signal_name(code: int) -> str:
    return next(signal.Signals(s).name for s, c in CODES.items() if c == code)
