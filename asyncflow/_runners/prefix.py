"""Bodies through a job prefix: ``[*prefix, python, -m, asyncflow.worker, JOB_DIR]``.

The command is started with anyio's process API, never through a shell (`jobs.execute`).
Its stdout and stderr stream back line by line, each labelled with the task, to this
process's stdout and stderr. Cancelling the run terminates the command (SIGTERM, which
`srun` turns into ending its job), then kills it after a grace period.
"""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Any

from .jobs import execute, run_job, write_job

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Sequence
    from pathlib import Path

    import anyio

    from .._task import Task
    from .base import Outcome
    from .jobs import JobEnd
    from .values import ValueFiles


class PrefixRunner:
    """Runs bodies as a command: a job prefix, then this Python and the worker module."""

    def __init__(
        self,
        prefix: Sequence[str],
        cache_dir: Path,
        limiter: anyio.CapacityLimiter | None = None,
        values: ValueFiles | None = None,
        *,
        python: str = sys.executable,
    ) -> None:
        self.prefix = tuple(prefix)
        self._values = values  # the job reads big values from the cache's filesystem, as its payload
        self.place = "prefix: " + shlex.join(self.prefix)
        self.cache_dir = cache_dir
        self.python = python
        self._limiter = limiter

    def command(self, job: Path) -> list[str]:
        """Return the command line that runs the job in directory `job`."""
        return [*self.prefix, self.python, "-m", "asyncflow.worker", str(job)]

    async def run(self, task: Task[Any, Any]) -> Outcome:
        job = await write_job(self.cache_dir, task, self._values)
        command = self.command(job)
        label = repr(task)

        async def launch(tail: deque[str]) -> JobEnd:
            return await execute(command, label, tail)

        return await run_job(job, label, self._limiter, launch, values=self._values)
