"""The files a job runs from and answers with; both ends agree on them. No event loop here.

Worker processes (`process.py`) answer with the same `Answer`, over a pipe.

A job directory ``<cache_dir>/asyncflow/jobs/<id>/`` lives under the cache directory,
which on a cluster is a shared filesystem (unlike /tmp), so a compute node can read the
payload and write the result. The worker never opens the SQLite index.

- ``sys_path.json``: the parent's ``sys.path``, so the worker imports what it imports.
- ``payload.pkl``: cloudpickle of the task, its requirements resolved to values. Classes
  whose module a worker could not import by name (a taskfile loaded by path,
  ``__main__``, a notebook cell) travel by value.
- ``result.pkl``: cloudpickle of ``Answer``, written to a temporary name and renamed, so
  the parent reads all of it or nothing.
- ``<id>.answer.pkl``, beside the directory: a big result's pickle (`values.spill`), when
  the answer says so; the parent moves it among the run's values for their readers. It
  is beside the directory so that a warm worker, which removes the directories of the
  jobs it got inline, leaves it for the parent.

Big requirement values are named in the payload by their files (`values.py`); on an SSH
host relative to the directory of the host's jobs, the job directory's parent.

A payload may hold secrets (its task's arguments and requirements), and loading a pickle
runs code: job directories are the owner's only (0700), and so are their files (0600).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import shutil
import sys
import traceback
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .._cache import blobs, paths
from . import values

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._task import Task

PAYLOAD = "payload.pkl"
SYS_PATH = "sys_path.json"  # read before the payload: unpickling it may import modules
RESULT = "result.pkl"


@dataclass(frozen=True)
class Answer:
    """What a worker sends back: the pickled result, or the exception and its traceback.

    `error` is None when the exception could not come back (`lost` says why): it did
    not pickle, or would not unpickle. Its type, text and traceback always do.
    """

    pickled: bytes | None
    error: BaseException | None = None
    error_type: str = ""
    error_text: str = ""
    traceback: str = ""
    lost: str = ""
    output: str = ""  # what the body printed and logged, from a worker process (a job's is relayed live)
    job: str = ""  # which job ran it, as the worker sees itself: "job SLURM_JOB_ID", else "pid PID"
    spilled: str = ""  # the file holding the pickled result instead of `pickled`, when it is big (values.py)


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
    cache_dir: Path, job_id: str, task: Task[Any, Any], dumps: Callable[[Task[Any, Any]], bytes] = blobs.dumps
) -> Path:
    """Write a job's payload, the task pickled by `dumps`; return its directory."""
    module_name = type(task).__module__
    if not _importable_elsewhere(module_name):
        blobs.register_by_value(sys.modules[module_name])
    paths.make_dirs(paths.root(cache_dir))
    job = paths.root(cache_dir) / "jobs" / job_id
    paths.make_dirs(job, paths.PRIVATE_DIR)
    write_file(job, SYS_PATH, json.dumps(sys.path).encode())
    write_file(job, PAYLOAD, dumps(task))
    return job


def write_file(job: Path, name: str, data: bytes) -> None:
    """Write a file of a job atomically, readable by its owner only."""
    blobs.write_atomic(job / name, job, data, private=True)


def read_payload(job: Path) -> Task[Any, Any]:
    """Read a payload (worker side), extending ``sys.path`` with the parent's first."""
    for entry in json.loads((job / SYS_PATH).read_text()):
        if entry not in sys.path:
            sys.path.append(entry)
    with values.reading_jobs_in(str(job.parent)):
        task: Task[Any, Any] = blobs.loads((job / PAYLOAD).read_bytes())
    return task


def encode_answer(answer: Answer) -> bytes:
    """Pickle a worker's answer; an exception that would not arrive whole goes as text only."""
    try:
        data = blobs.dumps(answer)
        if answer.error is not None:
            blobs.loads(data)  # e.g. an __init__ that its args cannot call again
    except Exception as exc:
        return blobs.dumps(replace(answer, error=None, lost=f"{type(exc).__name__}: {exc}"))
    return data


def write_answer(job: Path, answer: Answer) -> None:
    """Write the worker's answer atomically (worker side)."""
    write_file(job, RESULT, encode_answer(answer))


def failure(exc: BaseException) -> Answer:
    """Describe an exception raised by a body, for `write_answer`."""
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
    answer = blobs.loads(data)
    assert isinstance(answer, Answer), "asyncflow bug: a result file holds something else"
    return answer


def answer_path(job: Path) -> Path:
    """Return where the worker of `job` puts a big result (beside the job's directory)."""
    return job.with_name(job.name + ".answer.pkl")


def remove(job: Path) -> None:
    """Remove a job directory and its answer file, if the parent did not take it (after the answer is read)."""
    shutil.rmtree(job, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        answer_path(job).unlink()
