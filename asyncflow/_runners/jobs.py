"""The life of a job, shared by every runner that runs a body as a command of its own.

A job is a directory under the cache (`payload.py`): the runner writes the payload,
launches the job somewhere (a job prefix, Slurm, an SSH host), relays its output
labelled with the task, then reads the answer and removes the directory, whatever
happened. `run_job` is that skeleton; `execute` runs one local command to its end
(relaying its output, stopping it when cancelled); `job_failure` says how a job failed.
The history names each attempt's job: the pid of the command launched here, or what the
worker answers (its Slurm job id, its pid on a remote host).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

import anyio
from anyio.streams.text import TextReceiveStream

from .._cache import blobs
from .._capture import add, note_job, original
from .._errors import TaskFailedError, UnstorableResultError
from .._tally import working
from . import payload
from .values import result_in

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Sequence
    from pathlib import Path

    from anyio.abc import ByteReceiveStream, Process

    from .._task import Task
    from .base import Outcome
    from .values import ValueFiles

TAIL_LINES = 20  # lines of stderr kept for the error message
GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a job is cancelled


@dataclass(frozen=True)
class JobEnd:
    """How a job ended: the command that ran it (for messages) and its exit status."""

    command: tuple[str, ...]
    returncode: int


async def write_job(
    cache_dir: Path, task: Task[Any, Any], values: ValueFiles | None = None, shipped: list[str] | None = None
) -> Path:
    """Write the payload of a new job for `task`; return its directory (named by a fresh id).

    With `values`, its big requirement values go by reference: by their paths here (the job
    shares the cache's filesystem), or, given `shipped`, relative to the host's job
    directory, the files to upload appended to `shipped` (`ValueFiles.dumps_task`).
    """
    dumps = blobs.dumps if values is None else partial(values.dumps_task, shipped=shipped)
    return await anyio.to_thread.run_sync(payload.write_payload, cache_dir, secrets.token_hex(8), task, dumps)


async def run_job(
    job: Path,
    label: str,
    limiter: anyio.CapacityLimiter | None,
    launch: Callable[[deque[str]], Awaitable[JobEnd]],
    *,
    values: ValueFiles | None = None,
    unanswered: Callable[[JobEnd, str], None] | None = None,
    named_by_worker: bool = False,
) -> Outcome:
    """Launch the job whose payload is in `job` (under `limiter`), then read its answer.

    Args:
        job: the job directory, from `write_job`; removed here in any case.
        label: the task as the user writes it, for messages.
        limiter: bounds how many jobs run at once (``max_workers``); None: no bound.
        launch: runs the job to its end, keeping the last lines of its stderr in the
            deque it is given.
        values: the run's big values: a big result the job spilled beside its directory
            joins them, for its readers elsewhere; None: the file is removed once read.
        unanswered: called when the job ended without an answer, before the failure is
            built; it may raise a more telling error (e.g. no remote Python).
        named_by_worker: the history names the job as its worker does (a Slurm job id, a
            remote pid) rather than by the pid of the command launched here.

    Raises:
        TaskFailedError: the job failed; the message says how, with the command line.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    outcome: Outcome | None = None
    try:
        if limiter is None:
            working()
            end = await launch(tail)
        else:
            async with limiter:
                working()
                end = await launch(tail)
        answer = await anyio.to_thread.run_sync(payload.read_answer, job)
        if answer is not None:
            add(answer.output)  # a warm worker's body's output (a one-job worker's is relayed live)
        if named_by_worker and answer is not None and answer.job:
            note_job(answer.job)
        if end.returncode == 0 and answer is not None:
            outcome = await anyio.to_thread.run_sync(_result, job, answer, values)  # a big one takes a while
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(payload.remove, job)
    if outcome is not None:
        return outcome
    if answer is None and unanswered is not None:
        unanswered(end, "".join(tail))
    raise job_failure(label, end, answer, "".join(tail))


def _result(job: Path, answer: payload.Answer, files: ValueFiles | None) -> Outcome | None:
    """The result in a job's answer, from beside its directory when it was spilled there; None: it has none."""
    return result_in(answer, files, str(payload.answer_path(job)))


async def execute(
    command: Sequence[str],
    label: str,
    tail: deque[str],
    *,
    read_stdout: Callable[[ByteReceiveStream], Coroutine[Any, Any, None]] | None = None,
    follow: Callable[[anyio.Event], Coroutine[Any, Any, None]] | None = None,
    on_cancel: Callable[[], Awaitable[None]] | None = None,
) -> JobEnd:
    """Run `command` to its end, relaying its output; stop it if cancelled.

    Args:
        command: the command line, started without a shell.
        label: the task, labelling each relayed line.
        tail: keeps the last lines of stderr.
        read_stdout: reads the command's stdout instead of relaying it.
        follow: runs alongside the command (e.g. relaying output files); it is given an
            event set when the command has exited, and must return soon after.
        on_cancel: after the command was stopped on cancellation, ends what it started
            elsewhere (e.g. ``scancel``); shielded, and should be quick.
    """
    try:
        process = await anyio.open_process(list(command), stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise TaskFailedError(
            f"{label} could not start its job command {command[0]!r}: {exc}", task=label, command=command
        ) from exc
    note_job(f"pid {process.pid}")
    try:
        async with anyio.create_task_group() as tg:
            assert process.stdout is not None
            assert process.stderr is not None
            if read_stdout is None:
                tg.start_soon(relay, process.stdout, sys.stdout, label, None)
            else:
                tg.start_soon(read_stdout, process.stdout)
            tg.start_soon(relay, process.stderr, sys.stderr, label, tail)
            exited = anyio.Event()
            if follow is not None:
                tg.start_soon(follow, exited)
            await process.wait()
            exited.set()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop(process)
            if on_cancel is not None:
                await on_cancel()
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    assert process.returncode is not None
    return JobEnd(tuple(command), process.returncode)


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
    """Write one line of a job's output, labelled; keep it in its attempt's output, and in `tail` if given."""
    add(line + "\n")
    out = original(out)  # the line is in the capture already, without its label
    out.write(f"[{label}] {line}\n")
    out.flush()
    if tail is not None:
        tail.append(line + "\n")


def job_failure(label: str, end: JobEnd, answer: payload.Answer | None, stderr_tail: str) -> TaskFailedError:
    """Say how a job failed: the body's exception if it raised, else its exit status."""
    returncode = end.returncode
    if answer is not None and isinstance(answer.error, UnstorableResultError):
        what = str(answer.error)  # says what the body returned, and what to return instead
    elif answer is not None and answer.error_type:
        what = f"failed: {answer.error_type.rpartition('.')[2]}: {answer.error_text}"
    elif answer is None:
        what = f"failed: its job exited with status {returncode} without an answer"
    else:
        what = f"failed: its job exited with status {returncode}"
    message = (
        f"{label} {what}\n  command: {subprocess.list2cmdline(end.command)}\n  exit status: {returncode}"
    )
    if stderr_tail:
        message += "\n  last lines of stderr:\n" + "".join(
            f"    {line}" for line in stderr_tail.splitlines(True)
        )
    if answer is not None and answer.traceback:
        message += "\n  remote traceback:\n" + "".join(
            f"    {line}" for line in answer.traceback.splitlines(True)
        )
    error = TaskFailedError(
        message, task=label, command=end.command, returncode=returncode, stderr_tail=stderr_tail
    )
    if answer is not None and answer.error is not None:
        error.__cause__ = answer.error
    return error
