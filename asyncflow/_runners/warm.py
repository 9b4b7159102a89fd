"""Warm worker pools: long-lived workers that take many jobs each (``workers=N``).

A warm worker is ``python -u -m asyncflow.worker --serve N`` started once for the run (an
``srun`` step, a process on an SSH host) and given one job directory after another on its
stdin; it runs each body, writes the answer file as a one-job worker does, and replies
``done <status>`` on its stdout (the protocol is in `asyncflow.worker`). A pool starts
workers as bodies need them, up to its size, and keeps the idle ones for the next body.

A worker that is lost (its job ended, its node or connection went, it was killed) fails
the body it held with a `TaskFailedError` that says how it died, so the task's
``retries`` run the body again, and it is never reused: the next body starts a new
worker. A body cancelled while a worker runs it stops with that worker, which is
replaced the same way. At the end of the run the idle workers' stdin is closed and they
exit. What is special to a place (how to start a worker, send it a line, stop it, say
how it died) is a `Worker` subclass in the runner's module.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import anyio
from anyio.streams.text import TextReceiveStream

from .._capture import note_job, original
from .._errors import TaskFailedError
from .jobs import JobEnd

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from anyio.abc import ByteReceiveStream

MARK = (
    "\x1easyncflow-worker "  # starts each protocol line on a worker's stdout (\x1e: ASCII's record separator)
)
_LOST = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


class Worker(ABC):
    """One warm worker as its pool sees it: the protocol, over streams a subclass provides.

    The worker's stdout carries both what its bodies print (and its own stderr) and the
    protocol's lines, each of those starting with `MARK`: one ordered stream, so a body's
    last lines are relayed before its reply is read, and late lines are never labelled
    with the next body. (Its stderr stream holds only what the launcher says, such as
    srun's own errors.)

    Attributes:
        index: its number in the pool (1, 2...; a replacement gets a new one).
        who: how it names itself (``job 1234, worker 2``), once it said it is ready.
        command: the command line that started it, for messages.
    """

    def __init__(
        self, index: int, command: tuple[str, ...], stdout: ByteReceiveStream, stderr: ByteReceiveStream
    ) -> None:
        self.index = index
        self.command = command
        self.who = f"worker {index}"
        self._stdout = stdout
        self._buffer = b""  # what was read from stdout and not yet taken
        self._stderr = TextReceiveStream(stderr, errors="replace")
        self._pending = ""  # the start of a stderr line not ended yet

    @abstractmethod
    def alive(self) -> bool:
        """Tell whether the worker may still answer (as far as can be told without asking it)."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Write `data` to the worker's stdin."""

    @abstractmethod
    async def wait_end(self) -> tuple[int, str]:
        """Wait (briefly) for the worker to end; return its exit status and how it ended, in words."""

    @abstractmethod
    async def stop(self) -> None:
        """End the worker now, whatever it runs (cancellation); short, called shielded."""

    @abstractmethod
    async def close(self) -> None:
        """Close the worker's stdin, so that it exits; stop it if it does not soon."""

    async def wait_ready(self, label: str, tail: deque[str]) -> None:
        """Wait for the worker's ``ready`` line (it started); raise how it failed to, if it did."""
        line = await self._reply(label, tail)
        if not line.startswith("ready "):
            raise await self._lost(label, tail, f"it said {line!r} instead of ready")
        self.who = line.removeprefix("ready ")

    async def run(self, job: Path, label: str, tail: deque[str]) -> int:
        """Have the worker run the job in local directory `job`; return the job's exit status.

        Raises:
            TaskFailedError: the worker was lost before it answered; the message says how.
        """
        status, _ = await self.exchange(str(job), label, tail)
        return status

    async def exchange(
        self, job: str, label: str, tail: deque[str], files: list[bytes] | None = None
    ) -> tuple[int, bytes]:
        """Send the worker job directory `job` (as it sees it), and wait for its reply.

        With `files` (the contents of the job's ``sys_path`` and ``payload.pkl``), the
        worker writes them there itself, and the answer file's contents come back with
        the reply (for hosts that share no filesystem with this one).

        Returns:
            The job's exit status, and its answer file's contents when `files` was given.
        """
        if files is None:
            call = job.encode() + b"\n"
        else:
            call = f"inline {job} {len(files[0])} {len(files[1])}\n".encode() + b"".join(files)
        try:
            await self.send(call)
        except _LOST:
            raise await self._lost(label, tail, "") from None
        line = await self._reply(label, tail)
        words = line.split(" ")
        if not (
            words[0] == "done"
            and len(words) == (2 if files is None else 3)
            and all(w.isdigit() for w in words[1:])
        ):
            raise await self._lost(label, tail, f"it said {line!r} instead of done")
        answer = b""
        if files is not None:
            size = int(words[2])
            received = bytearray(self._buffer)  # appended in place: bytes would copy it all each time
            try:
                while len(received) < size:
                    received += await self._stdout.receive()
            except _LOST:
                raise await self._lost(label, tail, "") from None
            answer, self._buffer = bytes(received[:size]), bytes(received[size:])
        return int(words[1]), answer

    async def _reply(self, label: str, tail: deque[str]) -> str:
        """Read the worker's next protocol line, relaying its output meanwhile, labelled with `label`."""
        reply: str | None = None
        out = original(sys.stdout)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._relay, label, tail)
            try:
                while reply is None:
                    while b"\n" not in self._buffer:
                        self._buffer += await self._stdout.receive()
                    line, _, self._buffer = self._buffer.partition(b"\n")
                    text, marked, reply = line.decode(errors="replace").partition(MARK)
                    if text or not marked:  # a line of output (or the start of one, then a reply)
                        # Live only: the body's output reaches its attempt's log with the answer.
                        out.write(f"[{label}] {text}\n")
                        out.flush()
                        tail.append(text + "\n")
                    if not marked:
                        reply = None
            except _LOST:
                pass
            tg.cancel_scope.cancel()
        if reply is None:
            raise await self._lost(label, tail, "")
        return reply.strip()

    async def _relay(self, label: str, tail: deque[str]) -> None:
        """Relay what the launcher says on the worker's stderr, labelled with `label`."""
        out = original(sys.stderr)
        try:
            async for chunk in self._stderr:
                self._pending += chunk
                *lines, self._pending = self._pending.split("\n")
                for line in lines:
                    out.write(f"[{label}] {line}\n")
                    tail.append(line + "\n")
                out.flush()
        except _LOST:
            pass

    async def _lost(self, label: str, tail: deque[str], what: str) -> TaskFailedError:
        """Say how the worker was lost, once it has ended (its last stderr lines included)."""
        returncode, how = await self._ended(label, tail)
        stderr_tail = "".join(tail)
        message = f"{label} failed: its worker ({self.who}) was lost: {what or how}"
        message += f"\n  command: {' '.join(self.command)}\n  exit status: {returncode}"
        if stderr_tail:
            message += "\n  last lines of output:\n" + "".join(
                f"    {s}" for s in stderr_tail.splitlines(True)
            )
        return TaskFailedError(
            message, task=label, command=self.command, returncode=returncode, stderr_tail=stderr_tail
        )

    async def _ended(self, label: str, tail: deque[str]) -> tuple[int, str]:
        ended = (0, "")
        with anyio.CancelScope(shield=True):
            ended = await self.wait_end()
            with anyio.move_on_after(1):
                await self._relay(label, tail)
        return ended


class WarmPool:
    """Up to `size` warm workers, made by `start` as bodies need them, for one run.

    `start` is given the new worker's number and the task it starts for (for messages).
    """

    def __init__(self, size: int, start: Callable[[int, str], Awaitable[Worker]]) -> None:
        self._slots = anyio.CapacityLimiter(size)
        self._start = start
        self._idle: list[Worker] = []
        self._started = 0

    async def run(self, job: Path, label: str, tail: deque[str]) -> JobEnd:
        """Run the job in local directory `job` on an idle worker, or a new one.

        Raises:
            TaskFailedError: the worker could not start, or was lost; the message says how.
        """
        async with self._slots:
            worker = None
            while self._idle and worker is None:
                worker = self._idle.pop()
                if not worker.alive():  # lost while idle: no body of its own to fail
                    with anyio.CancelScope(shield=True):
                        await worker.stop()
                    worker = None
            try:
                if worker is None:
                    self._started += 1
                    worker = await self._start(self._started, label)
                    note_job(worker.who)
                    await worker.wait_ready(label, tail)
                note_job(worker.who)
                status = await worker.run(job, label, tail)
            except BaseException:  # lost, or cancelled while it ran the body: never reused
                if worker is not None:
                    with anyio.CancelScope(shield=True):
                        await worker.stop()
                raise
            self._idle.append(worker)
            return JobEnd(worker.command, status)

    async def aclose(self) -> None:
        """End the idle workers (every worker is idle once the run's bodies are done)."""
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for worker in idle:
                    tg.start_soon(worker.close)
