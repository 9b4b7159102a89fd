"""The `Runner` protocol every place-to-run implements, and what a runner hands back.

A runner gets a task whose requirements are already resolved (reading them gives
values) and returns the result together with its pickle, which the cache stores
(`pickle_result`, where the body ran: a result that does not pickle says why). The
scheduler never asks which runner it holds; `choose.py` picks one per task class.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .. import _keys
from .._cache import blobs
from .._errors import UnstorableResultError

if TYPE_CHECKING:
    from .._task import Task


@dataclass(frozen=True, slots=True)
class Outcome:
    """A body's result, and the same pickled for the cache."""

    value: Any
    pickled: bytes


def pickle_result(value: object) -> bytes:
    """Pickle a body's result for the cache, or say why it cannot be stored.

    Every runner pickles where the body ran (a thread, a worker process, a job), so the
    reason is found there too.

    Raises:
        UnstorableResultError: `value` does not pickle; the pickling error is the ``__cause__``.
    """
    try:
        return blobs.dumps(value)
    except Exception as exc:
        raise UnstorableResultError(_unstorable(value, exc)) from exc


def _unstorable(value: object, exc: Exception) -> str:
    if inspect.iscoroutine(value):
        value.close()  # it will never run: spare the "never awaited" warning
        return "returned a coroutine, which cannot be stored: did you forget `await`?"
    if inspect.isgenerator(value):
        return "returned a generator, which cannot be stored: return a list(...) instead"
    if inspect.isasyncgen(value):
        return "returned an async generator, which cannot be stored: return [x async for x in ...] instead"
    return (
        f"returned {_keys.a_type(value)}, which cannot be stored: it does not pickle "
        f"({type(exc).__name__}: {exc}); return plain data instead"
    )


class Runner(Protocol):
    """Runs one task body somewhere and hands back its outcome.

    Attributes:
        place: where its bodies run, in a few words, for the run history (``"thread"``,
            ``"process"``, ``"prefix: srun -p gpu"``, ``"ssh://me@node7:22"``...); a runner
            that knows each attempt's job names it with `_capture.note_job`, and the
            history adds it: ``"ssh://me@node7:22 (pid 4321)"``.
    """

    place: str

    async def run(self, task: Task[Any, Any]) -> Outcome:
        """Run ``task.run_task()`` to completion; raise what it raised.

        Cancelling the caller must stop the body (or abandon it, for threads).
        """
        ...


@runtime_checkable
class Closing(Protocol):
    """A runner that holds something for the whole run (SSH connections, worker processes) and lets go at its end."""

    async def aclose(self) -> None:
        """Release what the runner holds; called once, when the run ends."""
        ...
