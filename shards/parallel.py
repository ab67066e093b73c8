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


def _context():
    import multiprocessing as mp

    # fork is cheap (no re-imports) but only safe while this process runs no other thread
    # (an s3fs event loop, a test server): otherwise spawn, which inherits no locks
    return mp.get_context("fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn")


def ordered_map(fn: Callable, tasks: Iterable, workers: int, crashed: Callable[[object, str], object],
                window: int | None = None) -> Iterator:
    """fn(task) for each task, in order, on `workers` processes; crashed(task, error) for a task that
    kills its worker twice."""
    window = window or workers * 4
    it = iter(tasks)
    pending: deque[tuple[object, Future]] = deque()
    ctx = _context()
    ex = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        while True:
            while len(pending) < window:
                task = next(it, _END)
                if task is _END:
                    break
                pending.append((task, _submit(ex, fn, task)))
            if not pending:
                ex.shutdown(wait=True)  # reap the workers (their CPU time is then accounted)
                return
            task, fut = pending[0]
            try:
                result = fut.result()
            except BrokenProcessPool as e:
                # a worker died: the oldest unfinished task runs alone (it may be the culprit); the
                # others go to a fresh pool, keeping the results that had already come back
                ex.shutdown(wait=False, cancel_futures=True)
                pending.popleft()
                yield _run_alone(fn, task, ctx, crashed, e)
                ex = ProcessPoolExecutor(workers, mp_context=ctx)
                pending = deque((t, f if _succeeded(f) else _submit(ex, fn, t)) for t, f in pending)
                continue
            pending.popleft()
            yield result
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def _submit(ex: ProcessPoolExecutor, fn: Callable, task) -> Future:
    """Submit, turning a pool that broke meanwhile into a failed future (handled like any other)."""
    try:
        return ex.submit(fn, task)
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


_END = object()
