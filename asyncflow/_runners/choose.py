"""Which runner runs the bodies of a task class: the scheduler's choice, made once per class.

Run-time options win over the class's ``job_prefix``: a prefix or placement for one of
the class's channels (its own, `task_name`, first, then the ones it declares; at each,
``prefixes`` before ``hosts``), else the class's ``job_prefix``, else this process: async
bodies on the loop, plain ``def`` bodies on the ``executor``. Runners elsewhere are made
on first use, one per distinct prefix or placement, and shared between classes.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import anyio

from .base import Closing
from .local import LoopRunner, ThreadRunner

if TYPE_CHECKING:
    from .._options import Settings
    from .._placements import Dask, Ray, Where
    from .._task import Task
    from .base import Runner
    from .values import ValueFiles


class Runners:
    """The runners of one run, made on first use and picked per task class."""

    def __init__(self, settings: Settings) -> None:
        self._loop = LoopRunner()
        self._prefixes = settings.prefixes
        self._hosts = settings.hosts
        self._cache_dir = settings.cache_dir
        self._elsewhere: dict[Where, Runner] = {}
        # max_workers also bounds jobs run elsewhere, all prefixes and hosts together.
        self._jobs = None if settings.max_workers is None else anyio.CapacityLimiter(settings.max_workers)
        self._values: ValueFiles | None = None  # big values for bodies elsewhere, made on first use
        executor = settings.executor
        self._sync: Runner | None = None  # None: the executor is an engine, placed on first use
        self._engine: Dask | Ray | None = None
        if executor == "thread":
            self._sync = ThreadRunner(settings.max_workers)
            return
        # Imported only when used: concurrent.futures and its kin, and the placements'
        # dataclasses, take milliseconds of a first run.
        from .._placements import Dask, Ray

        if isinstance(executor, (Dask, Ray)):
            self._engine = executor
        else:
            from .process import ExecutorRunner, ProcessRunner

            if executor == "process":
                self._sync = ProcessRunner(settings.max_workers, self.values())
            else:
                self._sync = ExecutorRunner(executor, self.values())

    def pick(self, cls: type[Task[Any, Any]]) -> Runner:
        """Return the runner for the bodies of `cls`."""
        where = self.where(cls)
        if where is None:
            if inspect.iscoroutinefunction(cls.run_task):
                return self._loop
            if self._sync is not None:
                return self._sync
            where = self._engine
            assert where is not None, "asyncflow bug: no runner for plain def bodies"
        runner = self._elsewhere.get(where)
        if runner is None:
            runner = self._elsewhere[where] = self._make(where)
        return runner

    def where(self, cls: type[Task[Any, Any]]) -> Where | None:
        """Return where the bodies of `cls` run when not in this process, else None."""
        for channel in (cls.task_name, *cls.__af_options__.channels):
            prefix = self._prefixes.get(channel)
            if prefix is not None:
                return prefix
            host = self._hosts.get(channel)
            if host is not None:
                return host
        return cls.__af_options__.job_prefix

    def values(self) -> ValueFiles:
        """Return the files of the run's big values, for the runners of bodies elsewhere."""
        if self._values is None:
            from .values import ValueFiles

            self._values = ValueFiles(self._cache_dir)
        return self._values

    async def aclose(self) -> None:
        """Let the runners that hold connections, processes or engines close them: the run has ended."""
        try:
            for runner in (self._sync, *self._elsewhere.values()):
                if isinstance(runner, Closing):
                    await runner.aclose()
        finally:
            if self._values is not None:  # after the bodies that may read them
                await anyio.to_thread.run_sync(self._values.close)

    def _make(self, where: Where) -> Runner:
        # Each imported only when a run uses it (asyncssh alone takes 0.3 s).
        from .._placements import Dask, Host, Ray, Slurm

        if isinstance(where, Slurm):
            from .slurm import SlurmRunner

            return SlurmRunner(where, self._cache_dir, self._jobs, self.values())
        if isinstance(where, Host):
            from .ssh import SSHRunner

            return SSHRunner(where, self._cache_dir, self._jobs, self.values())
        if isinstance(where, Dask):
            from .dask_cluster import DaskRunner

            return DaskRunner(where, self._jobs, self.values())
        if isinstance(where, Ray):
            from .ray_cluster import RayRunner

            return RayRunner(where, self._jobs, self.values())
        from .prefix import PrefixRunner

        return PrefixRunner(where, self._cache_dir, self._jobs, self.values())
