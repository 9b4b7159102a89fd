"""Bodies as Slurm jobs that asyncflow knows by name and id, so cancelling ends them.

Facts seen on a real cluster shape this module: SIGTERM to ``srun`` ends its job at once
(SIGKILL only after a few seconds), and killing ``sbatch --wait`` leaves the job
running. So every job gets a unique ``--job-name``; on cancellation the runner stops the
client and also ``scancel``s the job, by id when it knows it (``sbatch --parsable``
prints it), else by name. The history names each attempt's job by its id (the worker's
``SLURM_JOB_ID``). The settings (`Slurm`) are in `_placements.py`.
"""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Any

import anyio

from .._capture import note_job
from . import payload
from .jobs import GRACE, emit, execute, run_job, write_job

if TYPE_CHECKING:
    from collections import deque
    from pathlib import Path

    from anyio.abc import ByteReceiveStream

    from .._placements import Slurm
    from .._task import Task
    from .base import Outcome
    from .jobs import JobEnd

_FOLLOW_EVERY = 0.2  # seconds between looks at an sbatch job's output files


class SlurmRunner:
    """Runs each body as a Slurm job (an ``srun`` step or an ``sbatch --wait`` job)."""

    def __init__(self, slurm: Slurm, cache_dir: Path, limiter: anyio.CapacityLimiter | None) -> None:
        self.slurm = slurm
        self.place = f"slurm: {slurm.style}" + (f" --partition {slurm.partition}" if slurm.partition else "")
        self.cache_dir = cache_dir
        self._limiter = limiter

    async def run(self, task: Task[Any, Any]) -> Outcome:
        job = await write_job(self.cache_dir, task)
        name = f"asyncflow-{job.name}"
        label = repr(task)
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

        return await run_job(job, label, self._limiter, launch, named_by_worker=True)


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
