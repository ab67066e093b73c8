"""Thread limits for the small fitting problems of the probes."""

from __future__ import annotations

import contextlib
import functools


@contextlib.contextmanager
def single_thread():
    """Probes are small problems: one thread each. Several threads on a busy machine spin-wait
    (seen: a 100-step segmentation head took 53 s with 2 threads and 2 s with 1 on a loaded
    2-core box). Restores torch's and the BLAS pools' thread counts on exit."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def one_thread(fn):
    """Decorator: run `fn` under `single_thread()`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper
