"""Big values by reference: a large upstream result travels to a body elsewhere as the name of a file.

A body run in another process (a worker process, a process executor's, a job on a cluster
that shares the cache's filesystem) gets its task pickled with the values of its
requirements. A value whose pickle is over `THRESHOLD` bytes is written once per run to
a file under the cache directory (owner-only, removed when the run ends), and payloads
hold a `ValueRef` to it instead: four readers of a 200 MB result no longer pickle, send
and unpickle it four times, and the parent pickles it once. The worker reads the file
when it unpickles the payload, and keeps the last values it read for the next body that
reads them. A big result comes back the same way (`spill`): the worker writes its pickle
to a file of the run's directory and answers with the file's name. Workers never open
the index; SSH hosts, which do not share the cache, get values inline as before.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import secrets
import shutil
import threading
from typing import TYPE_CHECKING, Any

from .._cache import blobs, paths
from .._requires import set_values, values_of

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._task import Task
    from .payload import Answer

THRESHOLD = 1 << 20  # bytes of pickle above which a value goes by reference
_KEPT = 2  # values a worker keeps after reading them (the next body often reads the same)


class ValueRef:
    """Stands for a value in a payload; unpickled, it is the value, read from its file."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (load_value, (self.path,))


_loaded: dict[str, Any] = {}  # worker side: path -> value, the latest `_KEPT`
_loaded_lock = threading.Lock()


def load_value(path: str) -> Any:
    """Worker side: return the value in the file `path` (read once while it is among the latest)."""
    with _loaded_lock:
        if path in _loaded:
            return _loaded[path]
    with open(path, "rb") as f:
        value = blobs.loads(f.read())
    with _loaded_lock:
        _loaded[path] = value
        while len(_loaded) > _KEPT:
            del _loaded[next(iter(_loaded))]
    return value


def spill(answer: Answer, directory: str) -> Answer:
    """Worker side: put a big pickled result in a file of `directory` (if given) instead of the answer."""
    if not directory or answer.pickled is None or len(answer.pickled) <= THRESHOLD:
        return answer
    path = os.path.join(directory, f"answer-{secrets.token_hex(8)}.pkl")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, paths.PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(answer.pickled)
    return dataclasses.replace(answer, pickled=None, spilled=path)


def take_spilled(path: str, files: ValueFiles | None) -> tuple[bytes, Callable[[object], None]]:
    """Parent side: read a result a worker spilled (`spill`).

    Returns:
        Its pickle, and what to call with the result: the run's `files` keep the file for
        the result's readers elsewhere (`ValueFiles.adopt`); without them it is removed.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except BaseException:
        _remove(path)
        raise
    if files is None:
        _remove(path)
        return data, lambda value: None
    return data, lambda value: files.adopt(value, path)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class ValueFiles:
    """The big values of one run's bodies elsewhere, each written once; `close` removes them."""

    def __init__(self, cache_dir: Path) -> None:
        self._dir = paths.tmp_dir(cache_dir) / f"values-{secrets.token_hex(6)}"
        # id(value) -> (the value, kept alive until the run ends so that its id names no
        # other value; its file). A small value is inlined: only its id is noted, so that
        # it is not pickled again (an id a new value takes over is inlined too: safe).
        self._files: dict[int, tuple[object, str]] = {}
        self._small: set[int] = set()
        self._lock = threading.Lock()

    def dumps_task(self, task: Task[Any, Any]) -> bytes:
        """Pickle `task` for a body elsewhere, its big requirement values by reference (call in a thread)."""
        values = values_of(task)
        if not values:
            return blobs.dumps(task)
        swapped = {name: self._swap(value) for name, value in values.items()}
        if all(swapped[name] is value for name, value in values.items()):
            return blobs.dumps(task)
        clone = copy.copy(task)  # its own state: the task itself keeps its values
        set_values(clone, swapped)
        return blobs.dumps(clone)

    def _swap(self, value: object) -> object:
        """Return `value` with itself, or the items of a list or dict of requirements, big ones by reference."""
        if type(value) is list:  # RequiresList: a list of upstream values
            items: list[Any] = value  # pyright: ignore[reportUnknownVariableType]  # any values
            swapped = [self._ref(v) for v in items]
            return items if all(a is b for a, b in zip(swapped, items, strict=True)) else swapped
        if type(value) is dict:  # RequiresDict
            entries: dict[Any, Any] = value  # pyright: ignore[reportUnknownVariableType]  # any values
            swapped_dict = {k: self._ref(v) for k, v in entries.items()}
            return entries if all(swapped_dict[k] is v for k, v in entries.items()) else swapped_dict
        return self._ref(value)

    def _ref(self, value: object) -> object:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        with self._lock:  # one pickle and one file per value, whichever body asks first
            if id(value) in self._small:
                return value
            known = self._files.get(id(value))
            if known is None or known[0] is not value:
                data = blobs.dumps(value)
                if len(data) <= THRESHOLD:
                    self._small.add(id(value))
                    return value
                known = self._files[id(value)] = (value, self._write(data))
        return ValueRef(known[1])

    def _write(self, data: bytes) -> str:
        paths.make_dirs(self._dir, paths.PRIVATE_DIR)
        path = self._dir / f"{len(self._files)}.pkl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, paths.PRIVATE_FILE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return str(path)

    def adopt(self, value: object, path: str) -> None:
        """Take a result a worker spilled to `path` (in `spill_dir`) as the file of `value`: its readers elsewhere get it as it is."""
        with self._lock:
            self._files[id(value)] = (value, path)
            self._small.discard(id(value))

    def spill_dir(self) -> str:
        """Return the directory where workers put big results (`spill`), made if needed."""
        paths.make_dirs(self._dir, paths.PRIVATE_DIR)
        return str(self._dir)

    def close(self) -> None:
        """Remove the files and forget the values: the run has ended."""
        with self._lock:
            self._files.clear()
            self._small.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
