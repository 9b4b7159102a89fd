"""Plain ``def`` bodies in worker processes, or in a user's `concurrent.futures.Executor`.

The task travels as a cloudpickle (so classes from ``__main__``, notebooks and test
modules work) and an answer (`payload.Answer`) comes back as one: the pickled result,
or what the body raised. An exception that pickles arrives as itself, with the
traceback from where it was raised as its ``__cause__``; one that does not (a class
the parent cannot import, an ``__init__`` that its args cannot call, a lock inside)
arrives as its type's name, its message and that traceback. Worker processes are the
run's own (`workers.py`): a cancelled call kills its worker, and a dead worker is named
with its exit status or signal.
"""

from __future__ import annotations

import os
import secrets
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import anyio

from .. import _mainguard
from .._cache import blobs
from .._capture import CAPTURE, Capture, add, capturing
from .._errors import TaskFailedError, WorkerTracebackError
from .._sync import BODY, ELSEWHERE
from .._tally import working
from . import payload, values
from .base import Outcome, call_and_pickle
from .workers import WorkerPool

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from .._task import Task
    from .values import ValueFiles


def call_pickled(request: bytes, parent: int = 0, spill: str = "") -> bytes:
    """Worker side: unpickle a task, run its body; return the pickled `payload.Answer`.

    In the process whose id is `parent` (an executor of threads), what the body raised
    is raised as it is instead: it needs no pickling, and keeps its cause. With `spill`,
    a big result goes to a file in that directory, and the answer names it (`payload.spill`).
    """
    elsewhere = BODY.set(ELSEWHERE)  # a task it runs cannot join the run (see `Task.run`)
    capture = Capture()
    captured = CAPTURE.set(capture)  # what the body prints and logs goes back with the answer
    try:
        with capturing():
            task: Task[Any, Any] = blobs.loads(request)
            answer = payload.Answer(call_and_pickle(task).pickled)
    except BaseException as exc:  # reported to the parent, whatever it is
        if os.getpid() == parent:
            raise
        answer = payload.failure(exc)
    finally:
        CAPTURE.reset(captured)
        BODY.reset(elsewhere)
    answer = answer._replace(output=capture.text())
    if spill:
        answer = payload.spill(answer, os.path.join(spill, f"answer-{secrets.token_hex(8)}.pkl"))
    return payload.encode_answer(answer)


class ProcessRunner:
    """Runs plain ``def`` bodies in the run's worker processes (`max_workers` at once)."""

    place = "process"

    def __init__(self, max_workers: int | None, files: ValueFiles) -> None:
        self._files = files
        spill = {"spill": files.spill_dir()}
        self._workers = WorkerPool(call_pickled, max_workers or os.cpu_count() or 1, spill)

    async def run(self, task: Task[Any, Any]) -> Outcome:
        label = repr(task)
        request = await anyio.to_thread.run_sync(self._files.dumps_task, task)
        answer = await self._workers.call(request, label)
        return await anyio.to_thread.run_sync(
            outcome_of, label, answer, self._files
        )  # a big one takes a while

    async def aclose(self) -> None:
        """End the worker processes: the run is over."""
        await self._workers.aclose()


class ExecutorRunner:
    """Runs plain ``def`` bodies in an executor the user passed (not shut down here)."""

    def __init__(self, executor: Executor, files: ValueFiles) -> None:
        self._executor = executor
        self.place = f"executor: {type(executor).__name__}"
        # Big values go by file to the processes of this machine; other executors (threads
        # share them already, a cluster's may not see this filesystem) get them inline.
        local = isinstance(executor, ProcessPoolExecutor)
        self._dumps = files.dumps_task if local else blobs.dumps
        self._spill = files.spill_dir() if local else ""
        self._files = files if local else None

    async def run(self, task: Task[Any, Any]) -> Outcome:
        label = repr(task)
        request = await anyio.to_thread.run_sync(self._dumps, task)
        future = self._executor.submit(call_pickled, request, os.getpid(), self._spill)
        working()  # as far as this process can tell: the executor may queue it
        try:
            answer = await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            future.cancel()
            raise
        except BrokenProcessPool as exc:
            raise TaskFailedError(_broken_pool(label), task=label) from exc
        return await anyio.to_thread.run_sync(outcome_of, label, answer, self._files)


def outcome_of(label: str, data: bytes, files: values.ValueFiles | None = None) -> Outcome:
    """The result in a worker's answer; raise what the body raised, if it did.

    A result the worker spilled to a file stays there for its readers elsewhere (`files`).
    """
    try:
        answer = blobs.loads(data)
    except Exception as exc:  # the worker read it back, so this process lacks something
        raise TaskFailedError(
            f"{label} failed, and its worker's answer cannot be unpickled here "
            f"({type(exc).__name__}: {exc}): import here what the worker imports",
            task=label,
        ) from exc
    assert isinstance(answer, payload.Answer), "asyncflow bug: a worker answered something else"
    add(answer.output)  # to this attempt's output
    outcome = values.result_in(answer, files)
    if outcome is not None:
        return outcome
    name = answer.error_type.rpartition(".")[2]
    where = WorkerTracebackError(f"{name} was raised in the worker:\n{answer.traceback.rstrip()}")
    error = answer.error
    if error is None:
        raise TaskFailedError(
            f"{label} failed: {name}: {answer.error_text}\n"
            f"  the {name} itself could not come back ({answer.lost}), only its text and traceback",
            task=label,
        ) from where
    if isinstance(error, Exception):  # as itself: `except ValueError` and retries work as here
        raise error from where
    error.__cause__ = where  # e.g. SystemExit: not for the scheduler to catch
    raise TaskFailedError(f"{label} failed: {name}: {answer.error_text}", task=label) from error


def _broken_pool(label: str) -> str:
    message = (
        f"{label} failed: its process pool is broken: one of its worker processes ended "
        "abruptly (a crash, os._exit(), a kill), and the pool runs nothing more; "
        "make a new ProcessPoolExecutor"
    )
    unguarded = _mainguard.unguarded_main_call()
    if unguarded is not None:
        path, line = unguarded
        message += (
            f'\n  {path}, line {line}, starts the workflow outside `if __name__ == "__main__":`; '
            "a pool started by spawn or forkserver imports the script in each worker, which "
            'starts it again: put the call under `if __name__ == "__main__":`'
        )
    return message
