"""The files a job runs from and answers with; both ends agree on them. No event loop here.

Worker processes (`process.py`) answer with the same `Answer`, over a pipe.

A job's worker imports this module and little else, and pays for each import again:
reading a payload and answering a body that returned plain data needs pickle and os (a
few milliseconds), where the cache's modules and cloudpickle (hashlib, gzip, dataclasses,
inspect, logging) cost ten times that, and json and threading half as much again. So the
worker's side here imports none of them: a payload is read with ``pickle.loads`` (which
``cloudpickle.loads`` is; a class that travels by value imports cloudpickle as it
unpickles), an answer without an exception is plain data for the standard pickler, job
files are written by `_atomic.write_atomic` (as results are; it imports os only), and
``sys_path`` is not JSON. The parent's side imports the cache's modules where it needs them.

A job directory ``<cache_dir>/asyncflow/jobs/<id>/`` lives under the cache directory,
which on a cluster is a shared filesystem (unlike /tmp), so a compute node can read the
payload and write the result. The worker never opens the SQLite index.

- ``sys_path``: the parent's ``sys.path``, so the worker imports what it imports: its
  entries as the filesystem encodes them, each ended by a NUL byte (which no path holds).
- ``payload.pkl``: cloudpickle of the task, its requirements resolved to values. Classes
  whose module a worker could not import by name (a taskfile loaded by path,
  ``__main__``, a notebook cell) travel by value.
- ``result.pkl``: cloudpickle of ``Answer``, written to a temporary name and renamed, so
  the parent reads all of it or nothing.
- ``<id>.answer.pkl``, beside the directory: a big result's pickle (`spill`), when
  the answer says so; the parent moves it among the run's values for their readers. It
  is beside the directory so that a warm worker, which removes the directories of the
  jobs it got inline, leaves it for the parent.

Big requirement values are named in the payload by their files (`ValueRef`, written
once per run by `values.ValueFiles`); on an SSH host relative to the directory of the
host's jobs, the job directory's parent. A worker reads them as it unpickles its payload
(`load_value`), and writes a big result beside its job's directory (`spill`).

A payload may hold secrets (its task's arguments and requirements), and loading a pickle
runs code: job directories are the owner's only (0700), and so are their files (0600).
"""

from __future__ import annotations

import _thread
import contextlib
import importlib.machinery
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from .._atomic import write_atomic

if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from pathlib import Path

    from .._task import Task

PAYLOAD = "payload.pkl"
SYS_PATH = "sys_path"  # read before the payload: unpickling it may import modules
RESULT = "result.pkl"
THRESHOLD = 1 << 20  # bytes of pickle above which a value goes by reference (`ValueRef`, `spill`)
# `paths.PRIVATE_FILE`, which the tests compare: importing the cache's paths here would
# cost every job their import.
PRIVATE_FILE = 0o600
_KEPT = 2  # values a worker keeps after reading them (the next body often reads the same)


class Answer(NamedTuple):
    """What a worker sends back: the pickled result, or the exception and its traceback.

    `error` is None when the exception could not come back (`lost` says why): it did
    not pickle, or would not unpickle. Its type, text and traceback always do. A named
    tuple, not a dataclass: a job's worker spares dataclasses' import (and inspect's).
    """

    pickled: bytes | None
    error: BaseException | None = None
    error_type: str = ""
    error_text: str = ""
    traceback: str = ""
    lost: str = ""
    output: str = ""  # what the body printed and logged, from a worker process (a job's is relayed live)
    job: str = ""  # which job ran it, as the worker sees itself: "job SLURM_JOB_ID", else "pid PID"
    spilled: str = ""  # the file holding the pickled result instead of `pickled`, when it is big (`spill`)


class ValueRef:
    """Stands for a value in a payload; unpickled, it is the value, read from its file.

    Its `path` is absolute, or relative to the directory of the worker's jobs (on an SSH
    host, see `reading_jobs_in`).
    """

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (load_value, (self.path,))


_loaded: dict[str, Any] = {}  # worker side: path -> value, the latest `_KEPT`
_loaded_lock = _thread.allocate_lock()  # = threading.Lock(), without threading's import
_jobs_dir = ""  # worker side: what a relative `ValueRef` path is relative to


@contextlib.contextmanager
def reading_jobs_in(directory: str) -> Generator[None]:
    """Worker side: resolve relative `ValueRef` paths against `directory` while unpickling a payload."""
    global _jobs_dir
    previous, _jobs_dir = _jobs_dir, directory
    try:
        yield
    finally:
        _jobs_dir = previous


def load_value(path: str) -> Any:
    """Worker side: return the value in the file `path` (read once while it is among the latest)."""
    path = os.path.join(_jobs_dir, path)  # an absolute path stays as it is
    with _loaded_lock:
        if path in _loaded:
            return _loaded[path]
    with open(path, "rb") as f:
        value = pickle.loads(f.read())  # `blobs.loads` is this very function
    with _loaded_lock:
        _loaded[path] = value
        while len(_loaded) > _KEPT:
            del _loaded[next(iter(_loaded))]
    return value


def spill(answer: Answer, path: str) -> Answer:
    """Worker side: put a big pickled result in the new file `path` (if given) instead of the answer."""
    if not path or answer.pickled is None or len(answer.pickled) <= THRESHOLD:
        return answer
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(answer.pickled)
    return answer._replace(pickled=None, spilled=path)


def _importable_elsewhere(module_name: str) -> bool:
    """Tell whether another interpreter with our sys.path can import `module_name`."""
    module = sys.modules.get(module_name)
    if module_name == "__main__" or module is None:
        return False
    # Search the path as a new interpreter would: importlib.util.find_spec would answer
    # from sys.modules, where a taskfile loaded by path sits under any name.
    parent, _, _ = module_name.rpartition(".")
    search = sys.path if not parent else getattr(sys.modules.get(parent), "__path__", None)
    if search is None:
        return False
    try:
        spec = importlib.machinery.PathFinder.find_spec(module_name, list(search))
    except (ImportError, ValueError):
        return False
    origin = getattr(module, "__file__", None)
    return spec is not None and (origin is None or spec.origin == origin)


def write_payload(
    cache_dir: Path, job_id: str, task: Task[Any, Any], dumps: Callable[[Task[Any, Any]], bytes] | None = None
) -> Path:
    """Write a job's payload, the task pickled by `dumps` (default `blobs.dumps`); return its directory."""
    from .._cache import blobs, paths  # the parent's side: a worker never needs them

    module_name = type(task).__module__
    if not _importable_elsewhere(module_name):
        blobs.register_by_value(sys.modules[module_name])
    paths.make_dirs(paths.root(cache_dir))
    job = paths.root(cache_dir) / "jobs" / job_id
    paths.make_dirs(job, paths.PRIVATE_DIR)
    write_file(job, SYS_PATH, b"".join(os.fsencode(entry) + b"\0" for entry in sys.path))
    write_file(job, PAYLOAD, (dumps or blobs.dumps)(task))
    return job


def write_file(job: str | os.PathLike[str], name: str, data: bytes) -> None:
    """Write a file of the job in directory `job` (which exists) atomically, readable by its owner only."""
    directory = os.fspath(job)
    write_atomic(os.path.join(directory, name), directory, data, PRIVATE_FILE)


def read_payload(job: str | os.PathLike[str]) -> Task[Any, Any]:
    """Read a payload (worker side), extending ``sys.path`` with the parent's first."""
    with open(os.path.join(job, SYS_PATH), "rb") as f:
        entries = [os.fsdecode(entry) for entry in f.read().split(b"\0")[:-1]]
    for entry in entries:
        if entry not in sys.path:
            sys.path.append(entry)
    with open(os.path.join(job, PAYLOAD), "rb") as f:
        data = f.read()
    with reading_jobs_in(os.path.dirname(os.path.abspath(job))):
        task: Task[Any, Any] = pickle.loads(data)  # = `blobs.loads`, without importing cloudpickle first
    return task


def encode_answer(answer: Answer) -> bytes:
    """Pickle a worker's answer; an exception that would not arrive whole goes as text only."""
    if answer.error is None:  # bytes and text: the standard pickler writes what cloudpickle would
        return pickle.dumps(answer, protocol=5)
    from .._cache import blobs  # an exception's class may have to travel by value

    try:
        data = blobs.dumps(answer)
        blobs.loads(data)  # e.g. an __init__ that its args cannot call again
    except Exception as exc:
        return blobs.dumps(answer._replace(error=None, lost=f"{type(exc).__name__}: {exc}"))
    return data


def write_answer(job: str | os.PathLike[str], answer: Answer) -> None:
    """Write the worker's answer atomically (worker side)."""
    write_file(job, RESULT, encode_answer(answer))


def failure(exc: BaseException) -> Answer:
    """Describe an exception raised by a body, for `write_answer`."""
    import traceback  # only when a body failed

    return Answer(
        None,
        exc,
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        str(exc),
        "".join(traceback.format_exception(exc)),
    )


def read_answer(job: Path) -> Answer | None:
    """Read a worker's answer; None when it wrote none (it crashed or was killed)."""
    try:
        data = (job / RESULT).read_bytes()
    except FileNotFoundError:
        return None
    answer = pickle.loads(data)  # = `blobs.loads`
    assert isinstance(answer, Answer), "asyncflow bug: a result file holds something else"
    return answer


def answer_file(job: str | os.PathLike[str]) -> str:
    """Return where the worker of the job in directory `job` puts a big result: beside the directory."""
    return os.path.normpath(job) + ".answer.pkl"


def answer_path(job: Path) -> Path:
    """Return `answer_file` of `job`, for the parent's side."""
    return job.with_name(answer_file(job.name))


def remove(job: Path) -> None:
    """Remove a job directory and its answer file, if the parent did not take it (after the answer is read)."""
    import shutil  # the parent's side, which has it already; a worker spares it

    shutil.rmtree(job, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        answer_path(job).unlink()
