"""asyncflow behind FastAPI: workflows run as background jobs of the server.

    AF_CACHE_DIR=/tmp/af-cache uvicorn fastapi_app:app --app-dir examples

- ``POST /jobs {"n": 8, "delay": 0.5}`` starts ``Total(n, delay)``, a fan-out over the
  leaves ``Leaf(0, delay) .. Leaf(n - 1, delay)``, and answers ``{"id": ...}`` at once.
- ``GET /jobs/{id}`` reports ``status`` (running, done, failed, cancelled), ``progress``
  (leaves finished by this server) and, once done, the ``result`` and the run's stats.
  ``?wait=SECONDS`` long-polls: it answers as soon as the job ends, or after SECONDS.

Jobs run in an anyio task group opened by the app's lifespan, not in the requests, so a
client going away never touches a job. Jobs that share nodes share their computation:
a leaf needed by two running jobs runs once (asyncflow's single flight), and a leaf
finished earlier is reused from the cache. On shutdown the task group is cancelled: the
running bodies are cancelled, finished leaves stay cached, nothing half-written is kept,
and the same job after a restart runs only what is missing.

``AF_CACHE_DIR`` is the cache (default ``./.cache``). When ``EXAMPLE_EXEC_LOG`` names a
file, every leaf body appends a ``start I`` and a ``done I`` line to it (the tests count
executions with it).
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from asyncflow import RequiresList, Task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CACHE_DIR = Path(os.environ.get("AF_CACHE_DIR", ".cache"))
EXEC_LOG = os.environ.get("EXAMPLE_EXEC_LOG")
LEAF_CONCURRENCY = 4  # leaves running at once, per job

log = logging.getLogger("fastapi_app")
finished_leaves: set[tuple[int, float]] = set()  # (i, delay) of leaves this server ran


def _log(line: str) -> None:
    if EXEC_LOG:
        with open(EXEC_LOG, "a") as f:  # one short write per line, appended
            f.write(line + "\n")


class Leaf(Task, channel="leaf"):
    """A slow leaf: sleeps, then returns i squared."""

    def build_task(self, i: int, delay: float) -> None:
        self.i = i
        self.delay = delay

    async def run_task(self) -> int:
        _log(f"start {self.i}")
        await anyio.sleep(self.delay)
        _log(f"done {self.i}")
        finished_leaves.add((self.i, self.delay))
        return self.i * self.i


class Total(Task):
    """The sum of Leaf(0) .. Leaf(n - 1)."""

    leaves: RequiresList[int]

    def build_task(self, n: int, delay: float) -> None:
        self.leaves = [Leaf(i, delay) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.leaves)


class JobRequest(BaseModel):
    n: int = Field(ge=1, le=1000)
    delay: float = Field(default=0.2, ge=0, le=60)


@dataclass
class Job:
    id: str
    n: int
    delay: float
    status: Literal["running", "done", "failed", "cancelled"] = "running"
    result: int | None = None
    stats: dict[str, Any] | None = None
    error: str | None = None
    ended: anyio.Event = field(default_factory=anyio.Event)

    def view(self) -> dict[str, Any]:
        done = sum((i, self.delay) in finished_leaves for i in range(self.n))
        return {
            "id": self.id,
            "status": self.status,
            "progress": {"leaves_done": self.n if self.status == "done" else done, "leaves": self.n},
            "result": self.result,
            "stats": self.stats,
            "error": self.error,
        }


async def run_job(job: Job) -> None:
    try:
        value, stats = await Total(job.n, job.delay).run_with_stats(
            cache_dir=CACHE_DIR, rate_limits={"leaf": LEAF_CONCURRENCY}
        )
    except anyio.get_cancelled_exc_class():
        job.status = "cancelled"
        log.warning("job %s cancelled", job.id)
        raise
    except Exception as exc:  # a failed workflow fails its job, not the server
        job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
    else:
        leaf = stats[Leaf.task_name]
        job.status, job.result = "done", value
        job.stats = {
            "run": stats.run,
            "reused": stats.reused,
            "leaves_run": leaf.run,
            "leaves_reused": leaf.reused,
        }
    finally:
        job.ended.set()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.jobs = {}
    async with anyio.create_task_group() as tg:
        app.state.task_group = tg
        yield
        tg.cancel_scope.cancel()  # shutdown: cancel the running jobs


app = FastAPI(title="asyncflow jobs", lifespan=lifespan)


@app.post("/jobs", status_code=202)
async def start_job(body: JobRequest, request: Request) -> dict[str, str]:
    job = Job(uuid.uuid4().hex, body.n, body.delay)
    request.app.state.jobs[job.id] = job
    request.app.state.task_group.start_soon(run_job, job)
    return {"id": job.id}


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request, wait: float = 0) -> dict[str, Any]:
    job: Job | None = request.app.state.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    with anyio.move_on_after(min(wait, 60)):
        await job.ended.wait()
    return job.view()
