"""The `Runner` protocol every place-to-run implements, and picking one for a class.

A runner gets a task whose requirements are already resolved (reading them gives
values) and returns the result together with its pickle, which the cache stores. The
scheduler never asks which runner it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._options import Settings
    from .._task import Task


@dataclass(frozen=True)
class Outcome:
    """A body's result, and the same pickled for the cache."""

    value: Any
    pickled: bytes


class Runner(Protocol):
    """Runs one task body somewhere and hands back its outcome."""

    async def run(self, task: Task[Any, Any]) -> Outcome:
        """Run ``task.run_task()`` to completion; raise what it raised.

        Cancelling the caller must stop the body (or abandon it, for threads).
        """
        ...


class Runners:
    """The runners of one run, made on first use and picked per task class."""

    def __init__(self, settings: Settings) -> None:
        from .local import LoopRunner, ThreadRunner
        from .process import ExecutorRunner, ProcessRunner

        self._loop = LoopRunner()
        executor = settings.executor
        self._sync: Runner
        if executor == "thread":
            self._sync = ThreadRunner(settings.max_workers)
        elif executor == "process":
            self._sync = ProcessRunner(settings.max_workers)
        else:
            self._sync = ExecutorRunner(executor)

    def pick(self, cls: type[Task[Any, Any]]) -> Runner:
        """Return the runner for the bodies of `cls`."""
        return self._loop if cls._af_async else self._sync
