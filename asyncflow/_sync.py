"""The one place where a blocking twin starts an event loop, and which run a body belongs to.

A body running in this process (on the loop, or in a worker thread, which inherits the
context) sees the run it belongs to in `BODY`: a task's ``run()`` there joins that run
instead of starting another, and a blocking twin called from a body's thread hands its
work to the run's event loop.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread

from ._errors import EventLoopRunningError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")

# The run and node of the body running in this context (set by the scheduler), or
# ELSEWHERE in a worker process or job; Any: the layers below the scheduler pass it on.
BODY: ContextVar[Any] = ContextVar("asyncflow_body", default=None)
ELSEWHERE = "a body running outside the run's process"


def run_blocking(fn: Callable[[], Coroutine[Any, Any, T]], *, api: str, instead: str) -> T:
    """Run `fn` in a new event loop, refusing when this thread already runs one.

    In a body's worker thread, `fn` runs on its run's event loop instead (it joins the run).

    Raises:
        EventLoopRunningError: called from inside a running event loop.
    """
    try:
        anyio.get_current_task()
    except anyio.NoEventLoopError:
        body = BODY.get()
        if body is None or body is ELSEWHERE:
            return anyio.run(fn)
        return anyio.from_thread.run(_within, body, fn)
    raise EventLoopRunningError(
        f"{api} blocks, so it cannot be called inside a running event loop; use `{instead}` there instead"
    )


async def _within(body: Any, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Await `fn` as part of `body` (the loop's task does not inherit the thread's context)."""
    token = BODY.set(body)
    try:
        return await fn()
    finally:
        BODY.reset(token)
