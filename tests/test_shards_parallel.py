"""shards.parallel.ordered_map: input order, chunking, worker crashes, and how workers are started."""

from __future__ import annotations

import os
import threading

import pytest

from shards.parallel import ordered_map

CRASH = 5


def _square(x: int) -> int:
    return x * x


def _square_or_die(x: int) -> int:
    if x == CRASH:
        os._exit(3)  # what a segfaulting decoder or the OOM killer does to a worker
    return x * x


def _crashed(task, error: str):
    return ("crashed", task, error)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_results_come_back_in_input_order_whatever_the_chunk(chunk):
    tasks = list(range(23))  # not a multiple of any chunk size used
    got = list(ordered_map(_square, iter(tasks), 2, _crashed, chunk=chunk))
    assert got == [x * x for x in tasks]


def test_a_task_that_kills_its_worker_becomes_a_crash_result_in_its_place():
    tasks = list(range(12))
    got = list(ordered_map(_square_or_die, tasks, 2, _crashed, chunk=3))
    assert len(got) == len(tasks)
    for x, r in zip(tasks, got):
        if x == CRASH:
            assert r[0] == "crashed" and r[1] == CRASH and "died" in r[2]
        else:
            assert r == x * x


# run in a fresh interpreter: this pytest process may hold service threads (the S3 endpoint)
_START_ORDER = """
import multiprocessing as mp, threading
from tests.test_shards_parallel import _crashed, _square
from shards.parallel import _context, ordered_map
assert threading.active_count() == 1
assert _context(()).get_start_method() == "fork"
results = ordered_map(_square, range(40), 2, _crashed, chunk=2)
print("started", len(mp.active_children()))
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()  # a thread appears only now, as a progress bar's monitor would
print("threaded context", _context(("shards.samples",)).get_start_method())
print("ordered", list(results) == [x * x for x in range(40)])
stop.set()
t.join()
"""


def test_workers_fork_before_ordered_map_returns_and_a_fork_server_replaces_fork_under_threads():
    # the builder creates its progress bar right after ordered_map: its workers must already be
    # running, forked from a process that had no other thread; with threads, fork is not used
    import subprocess
    import sys
    from pathlib import Path

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", _START_ORDER], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:3] == ["started 2", "threaded context forkserver", "ordered True"]


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        ordered_map(_square, [1], 2, _crashed, chunk=0)


def test_the_build_progress_bar_starts_no_thread():
    from shards.build import _progress_bar

    n = threading.active_count()
    bar = _progress_bar(total=3, disable=False)
    bar.update(3)
    assert threading.active_count() == n
    bar.close()
