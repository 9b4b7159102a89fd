"""The `Runner` protocol every place-to-run implements, and picking one for a class.

A runner gets a task whose requirements are already resolved (reading them gives
values) and returns the result together with its pickle, which the cache stores. The
scheduler never asks which runner it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import anyio

if TYPE_CHECKING:
    from pathlib import Path

    from .._options import Settings
    from .._task import Task


@dataclass(frozen=True, slots=True)
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


@runtime_checkable
class Closing(Protocol):
    """A runner that holds something for the whole run (SSH connections) and lets go at its end."""

    async def aclose(self) -> None:
        """Release what the runner holds; called once, when the run ends."""
        ...


class Placement(Protocol):
    """Somewhere other than this process that bodies can run: a Slurm setup, an SSH host.

    Placements are hashable values (frozen dataclasses): a run makes one runner per
    distinct placement and shares it between classes.
    """

    def make_runner(self, cache_dir: Path, limiter: anyio.CapacityLimiter | None) -> Runner:
        """Return a runner for this placement; `limiter` bounds its jobs (``max_workers``)."""
        ...


Where: TypeAlias = "tuple[str, ...] | Placement"  # a job prefix (argv) or a placement


class Runners:
    """The runners of one run, made on first use and picked per task class."""

    def __init__(self, settings: Settings) -> None:
        from .local import LoopRunner, ThreadRunner

        self._loop = LoopRunner()
        self._prefixes = settings.prefixes
        self._hosts = settings.hosts
        self._cache_dir = settings.cache_dir
        self._elsewhere: dict[Where, Runner] = {}
        # max_workers also bounds jobs run elsewhere, all prefixes and hosts together.
        self._jobs = None if settings.max_workers is None else anyio.CapacityLimiter(settings.max_workers)
        executor = settings.executor
        self._sync: Runner
        if executor == "thread":
            self._sync = ThreadRunner(settings.max_workers)
        else:  # imported only when used: anyio.to_process and its kin take milliseconds
            from .process import ExecutorRunner, ProcessRunner

            if executor == "process":
                self._sync = ProcessRunner(settings.max_workers)
            else:
                self._sync = ExecutorRunner(executor)

    def pick(self, cls: type[Task[Any, Any]]) -> Runner:
        """Return the runner for the bodies of `cls`."""
        where = self.where(cls)
        if where is None:
            return self._loop if cls._af_async else self._sync
        runner = self._elsewhere.get(where)
        if runner is None:
            if isinstance(where, tuple):
                from .prefix import PrefixRunner

                runner = PrefixRunner(where, self._cache_dir, limiter=self._jobs)
            else:
                runner = where.make_runner(self._cache_dir, self._jobs)
            self._elsewhere[where] = runner
        return runner

    async def aclose(self) -> None:
        """Let the runners that hold connections close them: the run has ended."""
        for runner in self._elsewhere.values():
            if isinstance(runner, Closing):
                await runner.aclose()

    def where(self, cls: type[Task[Any, Any]]) -> Where | None:
        """Return where the bodies of `cls` run when not in this process, else None.

        Run-time options win over the class's ``job_prefix``. The class's channels are
        looked up in order, its own (`task_name`) first, then the ones it declares; at
        each, a ``prefixes`` entry before a ``hosts`` entry. The first match decides.
        """
        for channel in (cls.task_name, *cls._af_options.channels):
            prefix = self._prefixes.get(channel)
            if prefix is not None:
                return prefix
            host = self._hosts.get(channel)
            if host is not None:
                return host
        return cls._af_options.job_prefix
