"""Bodies as Slurm jobs that asyncflow knows by name and id, so cancelling ends them.

Facts seen on a real cluster shape this module: SIGTERM to ``srun`` ends its job at once
(SIGKILL only after a few seconds), and killing ``sbatch --wait`` leaves the job
running. So every job gets a unique ``--job-name``; on cancellation the runner stops the
client and also ``scancel``s the job, by id when it knows it (``sbatch --parsable``
prints it), else by name.
"""

from __future__ import annotations

import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .._errors import TaskFailedError
from . import payload
from .prefix import GRACE, emit, execute, relay, run_job, stop

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Sequence
    from pathlib import Path

    from anyio.abc import ByteReceiveStream

    from .._task import Task
    from .base import Outcome, Runner

_FOLLOW_EVERY = 0.2  # seconds between looks at an sbatch job's output files


@dataclass(frozen=True)
class Slurm:
    """Run bodies as Slurm jobs: ``prefixes={"cluster": Slurm(partition="gpu")}``.

    Args:
        partition: ``--partition``; None for the cluster's default.
        time: ``--time`` limit, e.g. ``"00:30:00"``.
        extra: more arguments for ``srun``/``sbatch``, e.g. ``["--gres=gpu:1"]``.
        style: ``"srun"`` (default: output streams live, one step per body) or
            ``"sbatch"`` (a batch job per body, waited for with ``sbatch --wait``).
        python: the interpreter on the compute nodes (default: this one, which works
            when the nodes share this filesystem, as on most clusters).
    """

    partition: str | None = None
    time: str | None = None
    extra: Sequence[str] = field(default=())
    style: Literal["srun", "sbatch"] = "srun"
    python: str = sys.executable

    def __post_init__(self) -> None:
        extra = tuple(self.extra)
        if not all(isinstance(a, str) for a in extra):  # pyright: ignore[reportUnnecessaryIsInstance]  # user input
            raise TypeError(f"Slurm(extra={self.extra!r}): expected a list of strings")
        if self.style not in ("srun", "sbatch"):
            raise ValueError(f'Slurm(style={self.style!r}): expected "srun" or "sbatch"')
        object.__setattr__(self, "extra", extra)  # frozen: normalise to a hashable tuple

    def options(self, name: str) -> list[str]:
        """Return the options shared by ``srun`` and ``sbatch`` for job `name`."""
        out = ["--job-name", name]
        if self.partition is not None:
            out += ["--partition", self.partition]
        if self.time is not None:
            out += ["--time", self.time]
        return [*out, *self.extra]

    def make_runner(self, cache_dir: Path, limiter: anyio.CapacityLimiter | None) -> Runner:
        """Return the runner of this Slurm setup."""
        return SlurmRunner(self, cache_dir, limiter)


class SlurmRunner:
    """Runs each body as a Slurm job (an ``srun`` step or an ``sbatch --wait`` job)."""

    def __init__(self, slurm: Slurm, cache_dir: Path, limiter: anyio.CapacityLimiter | None) -> None:
        self.slurm = slurm
        self.cache_dir = cache_dir
        self._limiter = limiter

    async def run(self, task: Task[Any, Any]) -> Outcome:
        token = secrets.token_hex(8)
        name = f"asyncflow-{token}"
        job = await anyio.to_thread.run_sync(payload.write_payload, self.cache_dir, token, task)
        label = repr(task)
        worker = [self.slurm.python, "-m", "asyncflow.worker", str(job)]
        if self.slurm.style == "srun":
            command = ["srun", *self.slurm.options(name), *worker]
        else:
            script = job / "job.sh"
            script.write_text("#!/bin/sh\nexec " + shlex.join(worker) + "\n")
            command = [
                "sbatch", "--wait", "--parsable", *self.slurm.options(name),
                "--output", str(job / "stdout"), "--error", str(job / "stderr"), str(script),
            ]  # fmt: skip
        return await run_job(
            job, command, label, self._limiter, lambda tail: self._submit(command, name, job, label, tail)
        )

    async def _submit(self, command: list[str], name: str, job: Path, label: str, tail: deque[str]) -> int:
        if self.slurm.style == "srun":
            try:
                return await execute(command, label, tail)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await scancel(["--name", name])
                raise
        return await _sbatch(command, name, job, label, tail)


async def scancel(args: list[str]) -> None:
    """Cancel Slurm jobs (``scancel ARGS``); quietly, it is cleanup."""
    with anyio.move_on_after(GRACE):
        await anyio.run_process(["scancel", *args], check=False)


async def _sbatch(command: list[str], name: str, job: Path, label: str, tail: deque[str]) -> int:
    """Submit with ``sbatch --wait``, relay the job's output files, scancel if cancelled."""
    try:
        process = await anyio.open_process(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise TaskFailedError(
            f"{label} could not start {command[0]!r}: {exc}", task=label, command=command
        ) from exc
    job_ids: list[str] = []
    try:
        async with anyio.create_task_group() as tg:
            assert process.stdout is not None
            assert process.stderr is not None
            tg.start_soon(_job_id, process.stdout, job_ids)
            tg.start_soon(relay, process.stderr, sys.stderr, label, tail)
            follow = anyio.CancelScope()
            tg.start_soon(_follow, follow, job, label, tail)
            await process.wait()
            await anyio.sleep(_FOLLOW_EVERY)  # let the follower read the last lines
            follow.cancel()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await scancel(job_ids[:1] or ["--name", name])
            await stop(process)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    assert process.returncode is not None
    return process.returncode


async def _job_id(stream: ByteReceiveStream, job_ids: list[str]) -> None:
    """Read ``sbatch --parsable``'s answer, ``JOBID`` or ``JOBID;CLUSTER``."""
    text = b""
    async for chunk in stream:
        text += chunk
        if b"\n" in text and not job_ids:
            job_ids.append(text.split(b"\n", 1)[0].decode().split(";")[0].strip())


async def _follow(scope: anyio.CancelScope, job: Path, label: str, tail: deque[str]) -> None:
    """Relay new lines of the job's output files until cancelled (then flush the rest)."""
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

    with scope:
        while True:
            await anyio.to_thread.run_sync(read_new)
            await anyio.sleep(_FOLLOW_EVERY)
    await anyio.to_thread.run_sync(read_new)
    for name, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        if pending[name]:
            emit(out, label, pending[name], tail if name == "stderr" else None)
