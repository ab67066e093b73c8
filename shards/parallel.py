"""Ordered parallel map over inputs that survives a worker dying (a decoder segfault, the OOM killer).

Results come back in input order with a bounded number in flight (memory stays flat however
large the corpus). When a worker process dies, the pool is rebuilt and the oldest unfinished
input is retried alone: if it kills its worker again it becomes a reject (`worker_crash`)
instead of hanging or stopping the build.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice


def _context(preload: tuple[str, ...]):
    import multiprocessing as mp

    if sys.platform != "linux":
        return mp.get_context("spawn")
    # fork is cheapest (workers inherit every imported module) but only safe while this process
    # runs no other thread (an s3fs event loop, tqdm's monitor, a test server): a lock held by
    # one of them at the fork would stay held in the child forever. Otherwise a fork server:
    # one clean process that imports `preload` once and forks the workers, instead of spawn
    # re-importing numpy, Pillow, pydicom... in every worker (which cost most of the gain of a
    # second worker: benchmarks/shards_build.py).
    if threading.active_count() == 1:
        return mp.get_context("fork")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))  # read when the server starts, once per process
    return ctx


def ordered_map(fn: Callable, tasks: Iterable, workers: int, crashed: Callable[[object, str], object],
                window: int | None = None, preload: tuple[str, ...] = (), chunk: int = 1) -> Iterator:
    """fn(task) for each task, in order, on `workers` processes; crashed(task, error) for a task that
    kills its worker twice.

    `chunk` tasks travel to a worker together (one round trip instead of `chunk`: the pool's
    per-task cost is about a millisecond of CPU on each side, noticeable when a task takes
    ten); `window` chunks are in flight at most (default 4 per worker).
    The pool starts, and the first chunks are submitted, before this returns: workers are forked
    while the caller has not yet started threads of its own (a progress bar's monitor).
    `preload`: modules a fork server imports for the workers when fork is not safe.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    gen = _ordered(fn, _chunks(iter(tasks), chunk), workers, crashed, window or workers * 4, preload)
    next(gen)  # runs up to the first yield: pool started, first window submitted
    return gen


def _chunks(it: Iterator, n: int) -> Iterator[list]:
    while batch := list(islice(it, n)):
        yield batch


def _call_each(fn: Callable, batch: list) -> list:
    return [fn(t) for t in batch]


def _ordered(fn, chunks, workers, crashed, window, preload):
    pending: deque[tuple[list, Future]] = deque()
    ctx = _context(preload)
    ex = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        _fill(pending, window, chunks, ex, fn)
        yield _STARTED
        while True:
            _fill(pending, window, chunks, ex, fn)
            if not pending:
                ex.shutdown(wait=True)  # reap the workers (their CPU time is then accounted)
                return
            batch, fut = pending[0]
            try:
                results = fut.result()
            except BrokenProcessPool as e:
                # a worker died: the tasks of the oldest unfinished chunk run one by one, alone
                # (one of them may be the culprit); the other chunks go to a fresh pool, keeping
                # the results that had already come back
                ex.shutdown(wait=False, cancel_futures=True)
                pending.popleft()
                ctx = _context(preload)  # threads may have started since the first pool
                for task in batch:
                    yield _run_alone(fn, task, ctx, crashed, e)
                ex = ProcessPoolExecutor(workers, mp_context=ctx)
                pending = deque((b, f if _succeeded(f) else _submit(ex, fn, b)) for b, f in pending)
                continue
            pending.popleft()
            yield from results
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def _fill(pending: deque, window: int, chunks: Iterator[list], ex: ProcessPoolExecutor, fn: Callable) -> None:
    """Submit chunks until `window` are in flight or none are left."""
    while len(pending) < window and (batch := next(chunks, None)) is not None:
        pending.append((batch, _submit(ex, fn, batch)))


def _submit(ex: ProcessPoolExecutor, fn: Callable, batch: list) -> Future:
    """Submit, turning a pool that broke meanwhile into a failed future (handled like any other)."""
    try:
        return ex.submit(_call_each, fn, batch)
    except BrokenProcessPool as e:
        f: Future = Future()
        f.set_exception(e)
        return f


def _succeeded(f: Future) -> bool:
    return f.done() and not f.cancelled() and f.exception() is None


def _run_alone(fn, task, ctx, crashed, first_error):
    with ProcessPoolExecutor(1, mp_context=ctx) as solo:
        try:
            return solo.submit(fn, task).result()
        except BrokenProcessPool:
            return crashed(task, f"the worker process died twice decoding it ({first_error})")


_STARTED = object()
