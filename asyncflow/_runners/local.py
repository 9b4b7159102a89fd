"""Bodies in this process: ``async def`` on the event loop, plain ``def`` in threads."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio

from .._sync import THREAD_SLOT
from .._tally import working
from .base import Outcome, call_and_pickle, pickle_result

if TYPE_CHECKING:
    from .._task import Task


class LoopRunner:
    """Awaits ``async def`` bodies on the caller's event loop."""

    place = "loop"

    async def run(self, task: Task[Any, Any]) -> Outcome:
        working()
        value = await task.run_task()
        return Outcome(value, pickle_result(value))


class ThreadRunner:
    """Runs plain ``def`` bodies in worker threads, at most `max_workers` working at once.

    A body waiting for tasks it awaits (through a blocking twin, see `_sync.run_blocking`)
    lends its slot to them: only working bodies count, so parents waiting for their plain
    ``def`` children cannot hold every slot and keep them from running. Threads are not
    limited: a waiting body keeps its thread.

    A thread cannot be stopped: when the run is cancelled, a body still running is
    abandoned (its result is discarded) so that cancellation takes effect at once.
    """

    place = "thread"

    def __init__(self, max_workers: int | None) -> None:
        # Without max_workers, as many as anyio's default thread limiter allows (40).
        total = max_workers or anyio.to_thread.current_default_thread_limiter().total_tokens
        self._working = anyio.CapacityLimiter(total)
        # Not anyio's default limiter: it would count the waiting bodies' threads again.
        self._threads = anyio.CapacityLimiter(math.inf)

    async def run(self, task: Task[Any, Any]) -> Outcome:
        slot = _Slot(self._working)
        await slot.take_back()  # the first time too: queueing behind the bodies waiting for one
        working()
        token = THREAD_SLOT.set(slot)  # the worker thread runs in a copy of this context
        try:
            return await anyio.to_thread.run_sync(
                call_and_pickle, task, limiter=self._threads, abandon_on_cancel=True
            )
        finally:
            THREAD_SLOT.reset(token)
            slot.close()


class _Slot:
    """One body's slot of `max_workers`: held while it works, lent while it waits for tasks.

    Called on the loop only. It knows whether it holds its token: a body cancelled while
    its slot is lent ends holding none, and an abandoned thread may still lend or take
    its slot back after its runner closed it (both do nothing then).
    """

    __slots__ = ("_closed", "_held", "_limiter")

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._held = False
        self._closed = False

    def lend(self) -> None:
        if self._held:
            self._limiter.release_on_behalf_of(self)
            self._held = False

    async def take_back(self) -> None:
        if self._held or self._closed:
            return
        await self._limiter.acquire_on_behalf_of(self)
        self._held = True
        if self._closed:  # the runner closed it while this waited
            self.lend()

    def close(self) -> None:
        """Give the slot up for good: the body ended, or was abandoned."""
        self.lend()
        self._closed = True
