"""The tasks a body awaited, as its record keeps them: each as the call that makes it again.

A body that awaits tasks (see `_scheduler.join`) depends on them as much as on its
requirements, so its record keeps them with the versions of the results it read. The
next run makes each task again from its class and arguments, ``cls(*args, **kwargs)``,
and plans it as any other: the parent is fresh only while they are fresh and unchanged.

Only the call is kept, never a task's state (its requirements, what ``build_task`` set):
classes are pickled by reference (module and name), so a class that was renamed or
removed since cannot be made again, and its parent runs again. A task whose class or
arguments cannot be pickled at all is kept by its key alone, and its parent then runs
again on every run: the cache never takes an unknown dependency for an unchanged one.
"""

from __future__ import annotations

import io
import pickle
import zlib
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._task import Task

Awaited = list[tuple["Task[Any, Any] | str", str]]
"""The awaited tasks and the versions of their results the body read; a key where a task cannot be kept."""

# As stored: ``(class, args, kwargs or None, version)`` per task, or ``(key, version)``.
_Stored = list[tuple[Any, ...]]


def encode(awaited: Iterable[tuple[Task[Any, Any], str]]) -> bytes:
    """Encode the tasks a body awaited, with the versions it read, for its record."""
    calls: _Stored = [(*_call(task), version) for task, version in awaited]
    try:
        return zlib.compress(_dumps(calls), 1)
    except Exception:  # some task cannot be pickled: keep it by its key
        kept: _Stored = []
        for call in calls:
            try:
                _dumps(call)
                kept.append(call)
            except Exception:  # e.g. a class defined inside a function
                kept.append((_remake(*call[:3]).__af_key__, call[3]))
        return zlib.compress(_dumps(kept), 1)


def decode(blob: bytes) -> Awaited:
    """Make the awaited tasks again from `blob` (see `encode`); they are not built yet.

    Raises:
        Exception: whatever unpickling or a task's arguments raise (a class renamed or
            removed, arguments its ``build_task`` no longer takes); the caller runs the
            parent again.
    """
    calls: _Stored = pickle.loads(zlib.decompress(blob))  # the index is trusted as results are
    return [(call[0], call[1]) if len(call) == 2 else (_remake(*call[:3]), call[3]) for call in calls]


def _call(task: object) -> tuple[type, tuple[Any, ...], dict[str, Any] | None]:
    """Return the class and arguments that make `task` (a task made by `Task.__init__`)."""
    state: dict[str, Any] = task.__dict__  # duck-typed, as the layers below `_task` know tasks
    return type(task), state["_af_args"], state.get("_af_kwargs")


def _dumps(obj: object) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getvalue()


class _Pickler(pickle.Pickler):
    """Pickles a task passed as an argument as the call that makes it."""

    def reducer_override(self, obj: Any) -> Any:
        found: object = getattr(obj, "__dict__", None)
        if type(found) is not dict:
            return NotImplemented
        state = cast("dict[str, Any]", found)  # an instance dict: whatever is pickled
        if "_af_args" in state and "__af_key__" in state:
            return _remake, _call(obj)
        return NotImplemented


def _remake(
    cls: type[Task[Any, Any]], args: tuple[Any, ...], kwargs: dict[str, Any] | None
) -> Task[Any, Any]:
    return cls(*args, **(kwargs or {}))
