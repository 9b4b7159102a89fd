"""Big values by reference: a large upstream result travels to a body elsewhere as the name of a file.

A body run in another process (a worker process, a process executor's, a job on a cluster
that shares the cache's filesystem, a Dask or Ray worker on this machine) gets its task
pickled with the values of its requirements. A value whose pickle is over `THRESHOLD`
bytes is written once per run to a file under the cache directory (owner-only, removed
when the run ends), and payloads hold a `ValueRef` to it instead: four readers of a 200 MB
result no longer pickle, send and unpickle it four times, and the parent pickles it once.
The worker reads the file when it unpickles the payload, and keeps the last values it
read for the next body that reads them (`payload.load_value`). A big result comes back the
same way (`payload.spill`): the worker writes its pickle to a file and answers with the
file's name, and the run keeps that file (`take_spilled`) as the one its readers
elsewhere get. Workers never open the index, and a job's worker does not import this
module: what it needs of big values is in `payload.py`, which both ends agree on.

SSH hosts do not share the cache's filesystem: their payloads name the files relative to
the host's job directory (`dumps_task(..., shipped=...)`), and the SSH runner uploads each
file at most once per host per run (`sshconn.py`); a big answer spilled there stays there
for the host's next readers.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import secrets
import shutil
import threading
from typing import TYPE_CHECKING, Any

from .._cache import blobs, paths
from .._requires import set_values, values_of
from .base import Outcome
from .payload import THRESHOLD, ValueRef

if TYPE_CHECKING:
    from pathlib import Path

    from .._task import Task
    from .payload import Answer


def take_spilled(path: str, files: ValueFiles | None) -> tuple[Any, bytes]:
    """Parent side: read a result a worker spilled (`payload.spill`); return it and its pickle.

    The run's `files` keep the file for the result's readers elsewhere (`ValueFiles.adopt`;
    moved into the run's directory first if it is not there, e.g. beside a job's
    directory); without them it is removed. Any: whatever the body returned.
    """
    try:
        with open(path, "rb") as f:
            pickled = f.read()
        if files is not None:
            path = files.keep(path)
    except BaseException:
        _remove(path)
        raise
    if files is None:
        _remove(path)
        return blobs.loads(pickled), pickled
    value = blobs.loads(pickled)
    files.adopt(value, path)
    return value, pickled


def result_in(answer: Answer, files: ValueFiles | None, spilled_at: str = "") -> Outcome | None:
    """Parent side: the result a worker's answer carries, inline or spilled; None: it has none.

    A spilled result is read from `spilled_at` if given (where the file is here, e.g.
    beside a job's directory), else from where the worker wrote it (`take_spilled`).
    """
    if answer.spilled:
        return Outcome(*take_spilled(spilled_at or answer.spilled, files))
    if answer.pickled is None:
        return None
    return Outcome(blobs.loads(answer.pickled), answer.pickled)


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
        self._written = itertools.count()
        self._lock = threading.Lock()

    def dumps_task(self, task: Task[Any, Any], shipped: list[str] | None = None) -> bytes:
        """Pickle `task` for a body elsewhere, its big requirement values by reference (call in a thread).

        Args:
            task: the task, its requirements resolved to values.
            shipped: for a host that does not share the cache's filesystem: the payload
                names each file relative to the host's job directory (`relative`), and
                the local path of each file it names is appended here, to be uploaded.
        """
        values = values_of(task)
        if not values:
            return blobs.dumps(task)
        swapped = {name: self._swap(value, shipped) for name, value in values.items()}
        if all(swapped[name] is value for name, value in values.items()):
            return blobs.dumps(task)
        clone = copy.copy(task)  # its own state: the task itself keeps its values
        set_values(clone, swapped)
        return blobs.dumps(clone)

    def _swap(self, value: object, shipped: list[str] | None) -> object:
        """Return `value` with itself, or the items of a list or dict of requirements, big ones by reference."""
        if type(value) is list:  # RequiresList: a list of upstream values
            items: list[Any] = value  # pyright: ignore[reportUnknownVariableType]  # any values
            swapped = [self._ref(v, shipped) for v in items]
            return items if all(a is b for a, b in zip(swapped, items, strict=True)) else swapped
        if type(value) is dict:  # RequiresDict
            entries: dict[Any, Any] = value  # pyright: ignore[reportUnknownVariableType]  # any values
            swapped_dict = {k: self._ref(v, shipped) for k, v in entries.items()}
            return entries if all(swapped_dict[k] is v for k, v in entries.items()) else swapped_dict
        return self._ref(value, shipped)

    def _ref(self, value: object, shipped: list[str] | None) -> object:
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
        if shipped is None:
            return ValueRef(known[1])
        shipped.append(known[1])
        return ValueRef(self.relative(known[1]))

    def relative(self, path: str) -> str:
        """Name the file `path` of this run relative to the directory of the jobs (the same on every host)."""
        return f"{self._dir.name}/{os.path.basename(path)}"

    def _write(self, data: bytes) -> str:
        paths.make_dirs(self._dir, paths.PRIVATE_DIR)
        path = self._dir / f"{next(self._written)}.pkl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, paths.PRIVATE_FILE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return str(path)

    def adopt(self, value: object, path: str) -> None:
        """Take a result a worker spilled to `path` (in `spill_dir`) as the file of `value`: its readers elsewhere get it as it is."""
        with self._lock:
            self._files[id(value)] = (value, path)
            self._small.discard(id(value))

    def keep(self, path: str) -> str:
        """Move the file `path` (a spilled answer) into this run's directory, if it is elsewhere; return where it is."""
        kept = self.kept_path(path)
        if kept != path:
            shutil.move(path, kept)  # a rename: both are under the cache directory
        return kept

    def kept_path(self, path: str) -> str:
        """Return where `keep` puts the file `path`: this run's directory, under the same name (a job's answer is named by its job)."""
        return os.path.join(self.spill_dir(), os.path.basename(path))

    def spill_dir(self) -> str:
        """Return the directory where workers put big results (`payload.spill`), made if needed."""
        paths.make_dirs(self._dir, paths.PRIVATE_DIR)
        return str(self._dir)

    def close(self) -> None:
        """Remove the files and forget the values: the run has ended."""
        with self._lock:
            self._files.clear()
            self._small.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
