"""The one place where a blocking twin starts an event loop, and which run a body belongs to.

A body running in this process (on the loop, or in a worker thread, which inherits the
context) sees the run it belongs to in `BODY`: a task's ``run()`` there joins that run
instead of starting another, and a blocking twin called from a body's thread hands its
work to the run's event loop. A body in a worker thread also sees its slot of
``max_workers`` in `THREAD_SLOT`, which it lends while it waits for that work.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._errors import EventLoopRunningError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")

# The run and node of the body running in this context (set by the scheduler), or
# ELSEWHERE in a worker process or job; Any: the layers below the scheduler pass it on.
BODY: ContextVar[Any] = ContextVar("asyncflow_body", default=None)
ELSEWHERE = "a body running outside the run's process"


class ThreadSlot(Protocol):
    """A worker thread's slot of ``max_workers``; both methods are called on the run's loop."""

    def lend(self) -> None:
        """Give the slot up while the body waits (its tasks may need it)."""
        ...

    async def take_back(self) -> None:
        """Take the slot again before the body goes on, queueing behind the others."""
        ...


# The slot of the body running in this worker thread (set by the thread runner), or None.
THREAD_SLOT: ContextVar[ThreadSlot | None] = ContextVar("asyncflow_thread_slot", default=None)


def run_blocking(fn: Callable[[], Coroutine[Any, Any, T]], *, api: str, instead: str) -> T:
    """Run `fn` in a new event loop, refusing when this thread already runs one.

    In a body's worker thread, `fn` runs on its run's event loop instead (it joins the run),
    and the body's slot of ``max_workers`` is lent meanwhile.

    Raises:
        EventLoopRunningError: called from inside a running event loop.
    """
    # Here, not at the top: `import asyncflow` (a CLI's help, a job's worker) spares anyio's.
    import anyio

    try:
        anyio.get_current_task()
    except anyio.NoEventLoopError:
        body = BODY.get()
        if body is None or body is ELSEWHERE:
            return anyio.run(fn)
        import anyio.from_thread  # only in a body's thread: a script's run spares its import

        return anyio.from_thread.run(_within, body, fn, THREAD_SLOT.get())
    raise EventLoopRunningError(
        f"{api} blocks, so it cannot be called inside a running event loop; use `{instead}` there instead"
    )


async def _within(body: Any, fn: Callable[[], Coroutine[Any, Any, T]], slot: ThreadSlot | None) -> T:
    """Await `fn` as part of `body` (the loop's task does not inherit the thread's context).

    Meanwhile the body's thread only waits: it lends its slot, without which, under
    ``max_workers=1``, the plain ``def`` tasks that `fn` awaits would never get a thread.
    """
    import anyio

    token = BODY.set(body)
    try:
        if slot is None:
            return await fn()
        slot.lend()
        cancelled = False
        try:
            return await fn()
        except anyio.get_cancelled_exc_class():
            cancelled = True  # the body is abandoned: its runner ends holding no slot
            raise
        finally:
            if not cancelled:
                await slot.take_back()
    finally:
        BODY.reset(token)
