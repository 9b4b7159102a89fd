"""Plain ``def`` bodies in worker processes, or in a user's `concurrent.futures.Executor`.

The task travels as a cloudpickle (so classes from ``__main__``, notebooks and test
modules work) and its result comes back pickled. Worker processes are anyio's: a
cancelled call kills its worker.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_process

from .._cache import blobs
from .base import Outcome
from .local import call_and_pickle

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from .._task import Task


def call_pickled(payload: bytes) -> bytes:
    """Worker side: unpickle a task, run its body, return the pickled result."""
    # anyio's workers point stdout/stderr at /dev/null; give the body the parent's stderr.
    if sys.stderr is None or getattr(sys.stderr, "name", "") == os.devnull:
        sys.stdout = sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives with the worker
    task: Task[Any, Any] = blobs.loads(payload)
    return call_and_pickle(task).pickled


def _outcome(pickled: bytes) -> Outcome:
    return Outcome(blobs.loads(pickled), pickled)


class ProcessRunner:
    """Runs plain ``def`` bodies in anyio worker processes (`max_workers` at once)."""

    def __init__(self, max_workers: int | None) -> None:
        self._limiter = anyio.CapacityLimiter(max_workers or os.cpu_count() or 1)

    async def run(self, task: Task[Any, Any]) -> Outcome:
        payload = blobs.dumps(task)
        pickled = await anyio.to_process.run_sync(
            call_pickled, payload, cancellable=True, limiter=self._limiter
        )
        return _outcome(pickled)


class ExecutorRunner:
    """Runs plain ``def`` bodies in an executor the user passed (not shut down here)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def run(self, task: Task[Any, Any]) -> Outcome:
        future = self._executor.submit(call_pickled, blobs.dumps(task))
        try:
            pickled = await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            future.cancel()
            raise
        return _outcome(pickled)
