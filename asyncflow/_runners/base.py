"""The `Runner` protocol every place-to-run implements, and what a runner hands back.

A runner gets a task whose requirements are already resolved (reading them gives
values) and returns the result together with its pickle, which the cache stores
(`pickle_result`, where the body ran: a result that does not pickle says why). The
scheduler never asks which runner it holds; `choose.py` picks one per task class.

A job's worker runs bodies with `call_and_pickle` too, so this module imports neither
the cache's modules, cloudpickle, anyio nor inspect up front: a plain ``def`` body that
returns plain data needs none of them.
"""

from __future__ import annotations

import pickle
import types
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from .. import _keys
from .._errors import UnstorableResultError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._task import Task

# What `blobs.dumps` pickles with the standard pickler (the same bytes cloudpickle would
# write); anything else needs cloudpickle, which a job's worker then imports.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE: the code flag of an ``async def``


class Outcome(NamedTuple):
    """A body's result, and the same pickled for the cache."""

    value: Any
    pickled: bytes


def call_and_pickle(task: Task[Any, Any]) -> Outcome:
    """Run a body and pickle its result on the same thread.

    An ``async def`` body gets an event loop of its own: it comes here only in a job's
    worker, or on a worker of an engine placed per channel (Dask, Ray).
    """
    if _is_async(task.run_task):
        import anyio  # here: a job's plain ``def`` body spares its import

        value = anyio.run(task.run_task)
    else:
        value = task.run_task()
    return Outcome(value, pickle_result(value))


def _is_async(fn: Callable[[], Any]) -> bool:
    """Tell what `inspect.iscoroutinefunction(fn)` tells, importing inspect only when `fn` is no plain method."""
    func = fn.__func__ if isinstance(fn, types.MethodType) else None
    if type(func) is types.FunctionType and not hasattr(func, "_is_coroutine_marker"):
        return bool(func.__code__.co_flags & _CO_COROUTINE)  # a plain ``def`` or ``async def`` method
    import inspect  # a wrapped or marked function (Python 3.12's `inspect.markcoroutinefunction`)

    return inspect.iscoroutinefunction(fn)


def pickle_result(value: object) -> bytes:
    """Pickle a body's result for the cache, or say why it cannot be stored.

    Every runner pickles where the body ran (a thread, a worker process, a job), so the
    reason is found there too.

    Raises:
        UnstorableResultError: `value` does not pickle; the pickling error is the ``__cause__``.
    """
    try:
        if type(value) in _PLAIN:
            return pickle.dumps(value, protocol=5)
        from .._cache import blobs  # cloudpickle: the value may need it

        return blobs.dumps(value)
    except Exception as exc:
        raise UnstorableResultError(_unstorable(value, exc)) from exc


def _unstorable(value: object, exc: Exception) -> str:
    import inspect  # only for a result that does not pickle

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
