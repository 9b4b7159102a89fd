"""Bodies as Slurm jobs that asyncflow knows by name and id, so cancelling ends them.

Facts seen on a real cluster shape this module: SIGTERM to ``srun`` ends its job at once
(SIGKILL only after a few seconds), and killing ``sbatch --wait`` leaves the job
running. So every job gets a unique ``--job-name``; on cancellation the runner stops the
client and also ``scancel``s the job, by id when it knows it (``sbatch --parsable``
prints it), else by name. The history names each attempt's job by its id (the worker's
``SLURM_JOB_ID``). The settings (`Slurm`) are in `_placements.py`.

With ``Slurm(workers=N)`` the bodies go to a warm pool (`warm.py`) instead: each worker
is an ``srun`` job of its own running ``asyncflow.worker --serve``, fed job directories
on its stdin (srun forwards it to the task). A cancelled body stops its worker as a
cancelled job is stopped: SIGTERM to srun, then ``scancel`` by the worker's job name.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio

from .._capture import note_job
from .._errors import TaskFailedError
from . import payload
from .jobs import GRACE, emit, execute, run_job, stop, write_job
from .warm import WarmPool, Worker

if TYPE_CHECKING:
    from collections import deque
    from pathlib import Path

    from anyio.abc import ByteReceiveStream, Process

    from .._placements import Slurm
    from .._task import Task
    from .base import Outcome
    from .jobs import JobEnd
    from .values import ValueFiles

_FOLLOW_EVERY = 0.2  # seconds between looks at an sbatch job's output files


class SlurmRunner:
    """Runs each body as a Slurm job (an ``srun`` step or an ``sbatch --wait`` job)."""

    def __init__(
        self,
        slurm: Slurm,
        cache_dir: Path,
        limiter: anyio.CapacityLimiter | None,
        values: ValueFiles | None = None,
    ) -> None:
        self.slurm = slurm
        self.place = f"slurm: {slurm.style}" + (f" --partition {slurm.partition}" if slurm.partition else "")
        self.cache_dir = cache_dir
        self._limiter = limiter
        self._values = values
        self._pool = None if slurm.workers is None else WarmPool(slurm.workers, self._start_worker)
        self._token = secrets.token_hex(4)  # names this run's workers' jobs

    async def run(self, task: Task[Any, Any]) -> Outcome:
        job = await write_job(self.cache_dir, task, self._values)  # the nodes share the cache's filesystem
        name = f"asyncflow-{job.name}"
        label = repr(task)
        pool = self._pool
        if pool is not None:

            async def launch(tail: deque[str]) -> JobEnd:
                assert pool is not None
                return await pool.run(job, label, tail)

            return await run_job(job, label, self._limiter, launch, values=self._values, named_by_worker=True)
        worker = [self.slurm.python, "-m", "asyncflow.worker", str(job)]
        if self.slurm.style == "srun":
            command = ["srun", *self.slurm.options(name), *worker]

            async def launch(tail: deque[str]) -> JobEnd:
                return await execute(command, label, tail, on_cancel=lambda: scancel(["--name", name]))

        else:
            script = job / "job.sh"
            payload.write_file(job, script.name, ("#!/bin/sh\nexec " + shlex.join(worker) + "\n").encode())
            command = [
                "sbatch", "--wait", "--parsable", *self.slurm.options(name),
                "--output", str(job / "stdout"), "--error", str(job / "stderr"), str(script),
            ]  # fmt: skip
            job_ids: list[str] = []

            async def launch(tail: deque[str]) -> JobEnd:
                return await execute(
                    command,
                    label,
                    tail,
                    read_stdout=lambda stream: _job_id(stream, job_ids),
                    follow=lambda exited: _follow(exited, job, label, tail),
                    on_cancel=lambda: scancel(job_ids[:1] or ["--name", name]),
                )

        return await run_job(job, label, self._limiter, launch, values=self._values, named_by_worker=True)

    async def aclose(self) -> None:
        """End the warm workers, if any: the run is over."""
        if self._pool is not None:
            await self._pool.aclose()

    async def _start_worker(self, index: int, label: str) -> Worker:
        name = f"asyncflow-pool-{self._token}-{index}"
        command = (
            "srun", *self.slurm.options(name),
            self.slurm.python, "-u", "-m", "asyncflow.worker", "--serve", str(index),
        )  # fmt: skip
        try:
            process = await anyio.open_process(
                list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise TaskFailedError(
                f"{label} could not start a worker with {command[0]!r}: {exc}", task=label, command=command
            ) from exc
        return _SrunWorker(index, command, process, name)


class _SrunWorker(Worker):
    """A warm worker that is an ``srun`` job, its stdin and stdout the protocol's."""

    def __init__(self, index: int, command: tuple[str, ...], process: Process, name: str) -> None:
        assert process.stdout is not None, "asyncflow bug: a worker without stdout"
        assert process.stderr is not None, "asyncflow bug: a worker without stderr"
        super().__init__(index, command, process.stdout, process.stderr)
        self._process = process
        self._name = name

    def alive(self) -> bool:
        return self._process.returncode is None

    async def send(self, data: bytes) -> None:
        assert self._process.stdin is not None, "asyncflow bug: a worker without stdin"
        await self._process.stdin.send(data)

    async def wait_end(self) -> tuple[int, str]:
        with anyio.move_on_after(GRACE):
            await self._process.wait()
        if self._process.returncode is None:
            await self.stop()
        returncode = self._process.returncode
        assert returncode is not None, "asyncflow bug: a stopped worker has no exit status"
        if returncode < 0:
            try:
                return returncode, f"srun was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                return returncode, f"srun was killed by signal {-returncode}"
        if returncode > 128:  # srun passes on the worker's 128 + signal
            try:
                killed = f"the worker was killed by {signal.Signals(returncode - 128).name}"
            except ValueError:
                killed = f"the worker was killed by signal {returncode - 128}"
            return returncode, f"its job ended: {killed} (srun exited with status {returncode})"
        return returncode, f"its job ended (srun exited with status {returncode})"

    async def stop(self) -> None:
        await stop(self._process)
        await scancel(["--name", self._name])
        await self._process.aclose()

    async def close(self) -> None:
        assert self._process.stdin is not None, "asyncflow bug: a worker without stdin"
        with contextlib.suppress(OSError):  # it is gone already
            await self._process.stdin.aclose()
        with anyio.move_on_after(GRACE):
            await self._process.wait()
        if self._process.returncode is None:
            await self.stop()
        else:  # its job ended with it: nothing to scancel
            await self._process.aclose()


async def scancel(args: list[str]) -> None:
    """Cancel Slurm jobs (``scancel ARGS``); quietly, it is cleanup."""
    with anyio.move_on_after(GRACE):
        await anyio.run_process(["scancel", *args], check=False)


async def _job_id(stream: ByteReceiveStream, job_ids: list[str]) -> None:
    """Read ``sbatch --parsable``'s answer, ``JOBID`` or ``JOBID;CLUSTER``."""
    text = b""
    async for chunk in stream:
        text += chunk
        if b"\n" in text and not job_ids:
            job_ids.append(text.split(b"\n", 1)[0].decode().split(";")[0].strip())
            note_job(f"job {job_ids[0]}")  # also when it never answers


async def _follow(exited: anyio.Event, job: Path, label: str, tail: deque[str]) -> None:
    """Relay new lines of an sbatch job's output files until it has exited, then the rest."""
    offsets = {"stdout": 0, "stderr": 0}
    pending = {"stdout": "", "stderr": ""}

    def read_new() -> None:
        for name, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            try:
                with open(job / name, "rb") as f:
                    f.seek(offsets[name])
                    data = f.read()
            except FileNotFoundError:
                continue
            offsets[name] += len(data)
            pending[name] += data.decode(errors="replace")
            *lines, pending[name] = pending[name].split("\n")
            for line in lines:
                emit(out, label, line, tail if name == "stderr" else None)

    while not exited.is_set():
        await anyio.to_thread.run_sync(read_new)
        with anyio.move_on_after(_FOLLOW_EVERY):
            await exited.wait()
    await anyio.sleep(_FOLLOW_EVERY)  # the last lines may reach the files just after the job ends
    await anyio.to_thread.run_sync(read_new)
    for name, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        if pending[name]:
            emit(out, label, pending[name], tail if name == "stderr" else None)
