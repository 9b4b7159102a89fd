"""The `Runner` protocol every place-to-run implements, and picking one for a class.

A runner gets a task whose requirements are already resolved (reading them gives
values) and returns the result together with its pickle, which the cache stores. The
scheduler never asks which runner it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio

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
        self._prefixes = settings.prefixes
        self._cache_dir = settings.cache_dir
        self._by_prefix: dict[tuple[str, ...], Runner] = {}
        # max_workers also bounds jobs started through prefixes, all prefixes together.
        self._jobs = None if settings.max_workers is None else anyio.CapacityLimiter(settings.max_workers)
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
        prefix = self.prefix_for(cls)
        if prefix is not None:
            from .prefix import PrefixRunner

            runner = self._by_prefix.get(prefix)
            if runner is None:
                runner = self._by_prefix[prefix] = PrefixRunner(prefix, self._cache_dir, limiter=self._jobs)
            return runner
        return self._loop if cls._af_async else self._sync

    def prefix_for(self, cls: type[Task[Any, Any]]) -> tuple[str, ...] | None:
        """Return the job prefix of `cls`, if any.

        A run-time ``prefixes`` entry wins over the class's ``job_prefix``. Among the
        class's channels, its own (`task_name`) is looked up first, then the channels it
        declares, in their order: the first that has a prefix decides.
        """
        for channel in (cls.task_name, *cls._af_options.channels):
            prefix = self._prefixes.get(channel)
            if prefix is not None:
                return prefix
        return cls._af_options.job_prefix
