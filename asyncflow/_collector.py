"""Garbage collection while runs go on: fewer passes, and the caller's settings put back after.

A run makes a few objects per node that live as long as it does (the task, its node, its
key, its record) and frees few, so the collector's passes find nothing to free while the
full ones among them walk every object alive: ~15 % of the CPU time of a run of 100,000
nodes went into them. While at least one run goes on in the process, the first
generation's threshold is raised (far fewer passes, each over more young objects); the
last run to end puts back the thresholds the first one found, on every way out (an
error, a cancellation). The collector stays on: cycles made meanwhile are still freed.
A collector the caller disabled, or thresholds the caller changed during the run, are
left as the caller set them.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Generator

# The thresholds while runs go on: a young pass every 50,000 net allocations instead of
# 700, and the older generations as CPython's defaults have them (10 young passes per
# middle one; full passes stay bounded by CPython's own rule, a quarter more objects
# than the last full pass saw).
RUN_THRESHOLDS = (50_000, 10, 10)

_lock = threading.Lock()  # runs in several threads (several event loops) share the collector
_runs = 0  # runs going on in this process
_saved: tuple[int, int, int] | None = None  # the caller's thresholds, while we changed them


@contextmanager
def collection_for_run() -> Generator[None, None, None]:
    """Raise the collector's thresholds while the block runs; put the caller's back after it."""
    _enter()
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    global _runs, _saved
    with _lock:
        _runs += 1
        if _runs == 1 and gc.isenabled():
            found = gc.get_threshold()
            if found[0] < RUN_THRESHOLDS[0]:  # a caller's higher threshold is kept
                _saved = found
                gc.set_threshold(*RUN_THRESHOLDS)


def _leave() -> None:
    global _runs, _saved
    with _lock:
        _runs -= 1
        if _runs == 0 and _saved is not None:
            if gc.get_threshold() == RUN_THRESHOLDS:  # else the caller set them meanwhile: theirs stand
                gc.set_threshold(*_saved)
            _saved = None
