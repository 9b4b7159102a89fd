"""Bodies in this process: ``async def`` on the event loop, plain ``def`` in threads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from .base import Outcome, pickle_result

if TYPE_CHECKING:
    from .._task import Task


class LoopRunner:
    """Awaits ``async def`` bodies on the caller's event loop."""

    async def run(self, task: Task[Any, Any]) -> Outcome:
        value = await task.run_task()
        return Outcome(value, pickle_result(value))


def call_and_pickle(task: Task[Any, Any]) -> Outcome:
    """Run a plain ``def`` body and pickle its result on the same thread."""
    value = task.run_task()
    return Outcome(value, pickle_result(value))


class ThreadRunner:
    """Runs plain ``def`` bodies in worker threads, at most `max_workers` at once.

    A thread cannot be stopped: when the run is cancelled, a body still running is
    abandoned (its result is discarded) so that cancellation takes effect at once.
    """

    def __init__(self, max_workers: int | None) -> None:
        self._limiter = None if max_workers is None else anyio.CapacityLimiter(max_workers)

    async def run(self, task: Task[Any, Any]) -> Outcome:
        return await anyio.to_thread.run_sync(
            call_and_pickle, task, limiter=self._limiter, abandon_on_cancel=True
        )
