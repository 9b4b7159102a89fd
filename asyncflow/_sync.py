"""The one place where a blocking twin starts an event loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._errors import EventLoopRunningError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")


def run_blocking(fn: Callable[[], Coroutine[Any, Any, T]], *, api: str, instead: str) -> T:
    """Run `fn` in a new event loop, refusing when this thread already runs one.

    Raises:
        EventLoopRunningError: called from inside a running event loop.
    """
    try:
        anyio.get_current_task()
    except anyio.NoEventLoopError:
        return anyio.run(fn)
    raise EventLoopRunningError(
        f"{api} blocks, so it cannot be called inside a running event loop; use `{instead}` there instead"
    )
