"""SSH hosts: ``hosts={channel: "ssh://user@host:port"}`` or ``hosts={channel: Host(...)}``.

A body on an SSH host runs as ``python -u -m asyncflow.worker --exit-on-stdin-eof JOB``
there. The payload is written locally (`jobs.write_job`), uploaded over SFTP to a job
directory under the host's ``workdir``, and the answer downloaded the same way; the
remote job directory is removed afterwards (`jobs.run_job`, as for every job). A big
requirement value is uploaded once per host per run, to a directory beside the jobs'
that the run removes at its end, and payloads name it there (`values.py`); a big answer
is left there too when it is downloaded, so the host's next readers of it need no
upload. stdout and stderr stream back live, labelled with the task, as for job prefixes.
Host keys are checked against ``known_hosts`` unless the user passes
``Host(known_hosts=None)``. Each way of failing to reach a host (unknown or changed host
key, connection refused, no answer, key refused, no remote python) is a `HostError` of
its own `reason`, naming the host and what to do. The host settings, `Host`, are in
`_placements.py`. This module only imports asyncssh (0.3 s) when a run first uses a host.

Why a thread of its own: asyncssh is built on asyncio, and cannot run under trio (its
maintainer points trio users at trio-asyncio, ronf/asyncssh#208); asyncflow runs on
both. So every SSH job runs in one asyncio event loop in a thread of its own, shared by
all the runs of the process while any of them uses a host (anyio's
`BlockingPortalProvider`), and the caller's loop, asyncio or trio alike, awaits each
job with `BlockingPortal.call_async`. That holds no thread per job, and cancelling the
caller cancels the job inside the SSH loop and waits, shielded, for its cleanup (the
remote worker's end, the job directory's removal; both bounded in time). One path for
both backends, so the tests on each check the same code. `sshconn.py` holds that side.

Ending a remote job: closing an SSH channel does not stop a command that runs without
a pty, and sshd refuses signals for root logins. The worker therefore runs with
``--exit-on-stdin-eof``: a cancelled job gets an EOF on its stdin, then its channel is
closed, and the worker exits at once.

With ``Host(workers=N)`` bodies go to warm workers on the host instead, started once per
run (`sshconn.Pool.run_warm`, `warm.py`); they end the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from anyio.from_thread import BlockingPortalProvider

from .._errors import HostError, TaskFailedError
from .jobs import JobEnd, run_job, write_job

if TYPE_CHECKING:
    from collections import deque
    from pathlib import Path

    from anyio.from_thread import BlockingPortal

    from .._placements import Host
    from .._task import Task
    from .base import Outcome
    from .sshconn import Pool
    from .values import ValueFiles

# The SSH thread: started by the first run that uses a host, stopped when the last ends.
_SSH_LOOP = BlockingPortalProvider(backend="asyncio")


class SSHRunner:
    """Runs bodies on one SSH host, over the connections of one run (see the module doc)."""

    def __init__(
        self,
        host: Host,
        cache_dir: Path,
        limiter: anyio.CapacityLimiter | None = None,
        values: ValueFiles | None = None,
    ) -> None:
        self.host = host
        self._values = values  # big values, uploaded to the host once per run
        self.place = f"ssh://{host.user + '@' if host.user else ''}{host.host}:{host.port}"
        self.cache_dir = cache_dir
        self._limiter = limiter
        self._started = anyio.Lock()
        self._joined: tuple[BlockingPortal, Pool] | None = None  # the SSH thread, our pool in it

    async def run(self, task: Task[Any, Any]) -> Outcome:
        shipped: list[str] = []  # the big values' files the job reads, to be on the host first
        job = await write_job(self.cache_dir, task, self._values, shipped)
        label = repr(task)

        async def launch(tail: deque[str]) -> JobEnd:
            portal, pool = await self._start()
            if shipped:
                await portal.call_async(pool.ship, shipped)
            if self.host.workers is None:
                return await portal.call_async(pool.run_job, job, label, tail)
            try:
                return await portal.call_async(pool.run_warm, job, label, tail)
            except TaskFailedError as exc:  # a worker that never started may lack its python
                if exc.command is not None and exc.returncode is not None:
                    _check_python(self.host, JobEnd(exc.command, exc.returncode), exc.stderr_tail or "")
                raise

        return await run_job(
            job,
            label,
            self._limiter,
            launch,
            values=self._values,
            unanswered=lambda end, tail: _check_python(self.host, end, tail),
            named_by_worker=True,  # the history shows the worker's pid on the host
        )

    async def aclose(self) -> None:
        """Close this run's connections to the host, and let go of the SSH thread."""
        if self._joined is None:
            return
        portal, pool = self._joined
        self._joined = None
        with anyio.CancelScope(shield=True):
            try:
                await portal.call_async(pool.aclose)
            finally:
                await anyio.to_thread.run_sync(_SSH_LOOP.__exit__, None, None, None)

    async def _start(self) -> tuple[BlockingPortal, Pool]:
        """Join the SSH thread and make this run's pool there, on first use."""
        async with self._started:
            if self._joined is None:
                # Shielded: a lease taken and then lost to a cancellation would keep the
                # thread alive for good.
                with anyio.CancelScope(shield=True):
                    self._joined = await _join(self.host, self._values)
            joined = self._joined
            assert joined is not None, "asyncflow bug: the SSH pool was not made"
            return joined


async def _join(host: Host, values: ValueFiles | None) -> tuple[BlockingPortal, Pool]:
    """Take a lease on the SSH thread (starting it if need be), and make a pool for `host` there."""
    portal = await anyio.to_thread.run_sync(_SSH_LOOP.__enter__)
    try:
        return portal, await portal.call_async(_new_pool, host, values)
    except BaseException:
        await anyio.to_thread.run_sync(_SSH_LOOP.__exit__, None, None, None)
        raise


def _new_pool(host: Host, values: ValueFiles | None) -> Pool:
    """Make a pool (in the SSH thread, where importing asyncssh does not block the caller)."""
    from .sshconn import Pool

    return Pool(host, values)


def _check_python(host: Host, end: JobEnd, stderr_tail: str) -> None:
    """Raise a `HostError` when a job without an answer never got to run the worker."""
    lines = stderr_tail.strip().splitlines()
    last = lines[-1].strip() if lines else "nothing on stderr"
    if end.returncode in (126, 127):  # the shell's "cannot execute" / "command not found"
        raise HostError(
            f"{host.url}: the remote python {host.python!r} cannot be started (exit status "
            f"{end.returncode}: {last}); pass Host(python=...) the absolute path of a Python "
            "that has asyncflow installed",
            host=host.url,
            reason="python",
        )
    if "No module named 'asyncflow" in stderr_tail or "No module named asyncflow" in stderr_tail:
        raise HostError(
            f"{host.url}: asyncflow is not installed for the remote python {host.python!r} ({last}); "
            "install it there (`pip install asyncflow`), or pass Host(python=...) a Python that has it",
            host=host.url,
            reason="python",
        )
