"""Worker processes of one run, each answering one call at a time, and how a dead one died.

A worker is a fresh ``python -c`` with this process's ``sys.path`` that serves one
handler: a module-level function from bytes to bytes. Calls and answers go over its
stdin and stdout, each as 8 bytes of length, then the bytes. It imports nothing of the
parent's ``__main__`` (what a call needs travels in it: cloudpickle carries classes from
``__main__`` by value), so, unlike multiprocessing's spawn and anyio's workers, it does
not run a script's top level again. Workers start on demand up to the limit, are reused,
and end with the run; a cancelled call kills its worker, and a worker that died is never
reused: its exit status or signal names the failure.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from .._errors import TaskFailedError
from .._tally import working

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import ByteSendStream, Process

HEADER = struct.Struct(">Q")  # the length of the call or answer that follows
GRACE = 5.0  # seconds a worker has to exit once its stdin is closed, before it is killed


class WorkerPool:
    """Worker processes serving `handler` (called with a request and `options`), at most `max_workers` at once, for one run."""

    def __init__(
        self, handler: Callable[..., bytes], max_workers: int, options: dict[str, str] | None = None
    ) -> None:
        boot = (
            "import functools, json, sys\n"
            "sys.path[:] = json.loads(sys.argv[1])\n"
            f"from {handler.__module__} import {handler.__qualname__} as handler\n"
            f"from {__name__} import serve\n"
            "serve(functools.partial(handler, **json.loads(sys.argv[2])))\n"
        )
        self._command = [sys.executable, "-c", boot, json.dumps(sys.path), json.dumps(options or {})]
        self._limiter = anyio.CapacityLimiter(max_workers)
        self._idle: list[_Worker] = []

    async def call(self, request: bytes, label: str) -> bytes:
        """Send `request` to a worker and return its answer.

        Args:
            request: what the handler is called with.
            label: the task as the user writes it, for messages.

        Raises:
            TaskFailedError: the worker died before answering; `returncode` says how.
        """
        async with self._limiter:
            worker = await self._take()
            working()
            try:
                answer = await worker.exchange(request)
            except (anyio.IncompleteRead, anyio.BrokenResourceError) as exc:
                returncode = await worker.reap()
                raise TaskFailedError(_died(label, returncode), task=label, returncode=returncode) from exc
            except BaseException:  # cancelled: the body must stop now
                with anyio.CancelScope(shield=True):
                    await worker.kill()
                raise
            self._idle.append(worker)
            return answer

    async def aclose(self) -> None:
        """End the idle workers (every worker is idle once the run's bodies are done)."""
        idle, self._idle = self._idle, []
        for worker in idle:  # all told first, so that they exit together
            await worker.stdin.aclose()
        for worker in idle:
            await worker.reap()

    async def _take(self) -> _Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.process.returncode is None:
                return worker
            await worker.reap()  # killed while idle
        process = await anyio.open_process(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        assert process.stdin is not None, "asyncflow bug: a worker without stdin"
        assert process.stdout is not None, "asyncflow bug: a worker without stdout"
        return _Worker(process, process.stdin, BufferedByteReceiveStream(process.stdout))


@dataclass
class _Worker:
    process: Process
    stdin: ByteSendStream
    stdout: BufferedByteReceiveStream

    async def exchange(self, request: bytes) -> bytes:
        await self.stdin.send(HEADER.pack(len(request)) + request)
        (size,) = HEADER.unpack(await self.stdout.receive_exactly(HEADER.size))
        return await self.stdout.receive_exactly(size)

    async def reap(self) -> int:
        """Wait for the worker to exit (killing it after the grace period); return its status."""
        with anyio.CancelScope(shield=True):  # short, and the worker must not outlive the run
            with anyio.move_on_after(GRACE):
                await self.process.wait()
            await self.kill()
        assert self.process.returncode is not None, "asyncflow bug: a reaped worker has no status"
        return self.process.returncode

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                self.process.kill()
        await self.process.aclose()


def _died(label: str, returncode: int) -> str:
    if returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exit status {returncode}"
    return (
        f"{label} failed: its worker process died ({how})\n"
        "  a crash in the body or in a library it calls (a segfault, os._exit(), the "
        "out-of-memory killer) ends the process; its stderr above may say where"
    )


def serve(handler: Callable[[bytes], bytes]) -> None:
    """Worker side: answer calls from stdin with `handler` until stdin ends (the run is over)."""
    calls = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    # Only calls and answers use those pipes: the body reads an empty stdin, and what it
    # prints (from Python or C) goes to the parent's stderr.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    faulthandler.enable()  # a segfault prints the Python stack where it happened
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it cancels
    while True:
        header = calls.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        (size,) = HEADER.unpack(header)
        answer = handler(calls.read(size))
        sys.stdout.flush()
        answers.write(HEADER.pack(len(answer)) + answer)
        answers.flush()
