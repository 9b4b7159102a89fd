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


def encode(awaited: Iterable[tuple[Task[Any, Any], str]]) -> bytes:
    """Encode the tasks a body awaited, with the versions it read, for its record."""
    pairs = list(awaited)
    try:
        return zlib.compress(_dumps(pairs), 1)
    except Exception:  # some task cannot be pickled: keep it by its key
        kept: Awaited = []
        for task, version in pairs:
            try:
                _dumps(task)
                kept.append((task, version))
            except Exception:  # e.g. a class defined inside a function
                kept.append((task.__af_key__, version))
        return zlib.compress(_dumps(kept), 1)


def decode(blob: bytes) -> Awaited:
    """Make the awaited tasks again from `blob` (see `encode`); they are not built yet.

    Raises:
        Exception: whatever unpickling or a task's arguments raise (a class renamed or
            removed, arguments its ``build_task`` no longer takes); the caller runs the
            parent again.
    """
    pairs: Awaited = pickle.loads(zlib.decompress(blob))  # the index is trusted as results are
    return pairs


def _dumps(obj: object) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getvalue()


class _Pickler(pickle.Pickler):
    """Pickles a task (also one passed as an argument) as the call that makes it."""

    def reducer_override(self, obj: Any) -> Any:
        found: object = getattr(obj, "__dict__", None)
        if type(found) is not dict:
            return NotImplemented
        state = cast("dict[str, Any]", found)  # an instance dict: whatever is pickled
        # A task made by `Task.__init__`: duck-typed, as the layers below `_task` know tasks.
        if "_af_args" in state and "__af_key__" in state:
            return _remake, (type(obj), state["_af_args"], state.get("_af_kwargs", {}))
        return NotImplemented


def _remake(cls: type[Task[Any, Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Task[Any, Any]:
    return cls(*args, **kwargs)
