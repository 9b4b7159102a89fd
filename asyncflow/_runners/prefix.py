"""Bodies through a job prefix: ``[*prefix, python, -m, asyncflow.worker, JOB_DIR]``.

The command is started with anyio's process API, never through a shell. Its stdout and
stderr stream back line by line, each labelled with the task, to this process's stdout
and stderr. Cancelling the run terminates the command (SIGTERM, which `srun` turns into
ending its job), then kills it after a grace period.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, TextIO

import anyio
from anyio.streams.text import TextReceiveStream

from .._cache import blobs
from .._errors import TaskFailedError
from . import payload
from .base import Outcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    from anyio.abc import ByteReceiveStream, Process

    from .._task import Task

TAIL_LINES = 20  # lines of stderr kept for the error message
GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a job is cancelled


class PrefixRunner:
    """Runs bodies as a command: a job prefix, then this Python and the worker module."""

    def __init__(
        self,
        prefix: Sequence[str],
        cache_dir: Path,
        *,
        limiter: anyio.CapacityLimiter | None = None,
        python: str = sys.executable,
    ) -> None:
        self.prefix = tuple(prefix)
        self.cache_dir = cache_dir
        self.python = python
        self._limiter = limiter

    def command(self, job: Path) -> list[str]:
        """Return the command line that runs the job in directory `job`."""
        return [*self.prefix, self.python, "-m", "asyncflow.worker", str(job)]

    async def run(self, task: Task[Any, Any]) -> Outcome:
        job = await anyio.to_thread.run_sync(
            payload.write_payload, self.cache_dir, secrets.token_hex(8), task
        )
        command = self.command(job)
        label = repr(task)
        return await run_job(job, command, label, self._limiter, lambda tail: execute(command, label, tail))


async def run_job(
    job: Path,
    command: list[str],
    label: str,
    limiter: anyio.CapacityLimiter | None,
    launch: Callable[[deque[str]], Awaitable[int]],
) -> Outcome:
    """Launch a job whose payload is in `job` (under `limiter`), then read its answer.

    `launch` runs the job to its end and returns its exit status, keeping the last lines
    of its stderr in the deque it is given. The job directory is removed in any case.

    Raises:
        TaskFailedError: the job failed; the message says how, with the command line.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        if limiter is None:
            returncode = await launch(tail)
        else:
            async with limiter:
                returncode = await launch(tail)
        answer = await anyio.to_thread.run_sync(payload.read_answer, job)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(payload.remove, job)
    if returncode == 0 and answer is not None and answer.pickled is not None:
        return Outcome(blobs.loads(answer.pickled), answer.pickled)
    raise job_failure(label, command, returncode, answer, "".join(tail))


async def execute(command: list[str], label: str, tail: deque[str]) -> int:
    """Run `command` to its end, relaying its output; stop it if cancelled."""
    try:
        process = await anyio.open_process(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise TaskFailedError(
            f"{label} could not start its job command {command[0]!r}: {exc}", task=label, command=command
        ) from exc
    try:
        async with anyio.create_task_group() as tg:
            assert process.stdout is not None
            assert process.stderr is not None
            tg.start_soon(relay, process.stdout, sys.stdout, label, None)
            tg.start_soon(relay, process.stderr, sys.stderr, label, tail)
            await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop(process)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    assert process.returncode is not None
    return process.returncode


async def stop(process: Process) -> None:
    """Terminate `process`, then kill it if it is still there after the grace period."""
    if process.returncode is not None:
        return
    process.terminate()
    with anyio.move_on_after(GRACE):
        await process.wait()
        return
    process.kill()
    await process.wait()


async def relay(stream: ByteReceiveStream, out: TextIO, label: str, tail: deque[str] | None) -> None:
    """Copy `stream` to `out` line by line, each line prefixed with ``[label]``."""
    pending = ""
    async for chunk in TextReceiveStream(stream, errors="replace"):
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            emit(out, label, line, tail)
    if pending:
        emit(out, label, pending, tail)


def emit(out: TextIO, label: str, line: str, tail: deque[str] | None) -> None:
    out.write(f"[{label}] {line}\n")
    out.flush()
    if tail is not None:
        tail.append(line + "\n")


def job_failure(
    label: str, command: list[str], returncode: int, answer: payload.Answer | None, stderr_tail: str
) -> TaskFailedError:
    if answer is not None and answer.error_type:
        what = f"failed: {answer.error_type.rpartition('.')[2]}: {answer.error_text}"
    elif answer is None:
        what = f"failed: its job exited with status {returncode} without an answer"
    else:
        what = f"failed: its job exited with status {returncode}"
    message = f"{label} {what}\n  command: {subprocess.list2cmdline(command)}\n  exit status: {returncode}"
    if stderr_tail:
        message += "\n  last lines of stderr:\n" + "".join(
            f"    {line}" for line in stderr_tail.splitlines(True)
        )
    if answer is not None and answer.traceback:
        message += "\n  remote traceback:\n" + "".join(
            f"    {line}" for line in answer.traceback.splitlines(True)
        )
    error = TaskFailedError(
        message, task=label, command=command, returncode=returncode, stderr_tail=stderr_tail
    )
    if answer is not None and answer.error is not None:
        error.__cause__ = answer.error
    return error
