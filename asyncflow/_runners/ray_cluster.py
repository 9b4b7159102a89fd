"""Bodies as Ray tasks, each named after its task (``Square(3)``) in Ray's dashboard.

A body is ``call_pickled.options(name=repr(task), ...).remote(request)``, with no retries
of Ray's own (the task's ``retries`` decide). Cancelling the run force-cancels its
tasks: ``ray.cancel(ref, force=True)`` kills the worker running one, and a queued one
never starts. Big values go by file when every node of the cluster is this machine
(`values.py`). When Ray is not initialised in this process, the runner calls
``ray.init`` at first use and ``ray.shutdown`` when the run ends. The settings (`Ray`)
are in `_placements.py`; what Dask and Ray share is in `engines.py`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from .._capture import note_job
from .engines import THIS_MACHINE, EngineRunner, missing_extra, wait_done
from .process import call_pickled

try:
    import ray as _ray
except ImportError as exc:  # an optional extra
    raise missing_extra("Ray(...)", "ray", "ray") from exc

ray: Any = _ray  # Any: its types are partial, and strict mode would flag each use

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .._placements import Ray
    from .values import ValueFiles


class RayRunner(EngineRunner["tuple[Any, Future[bytes]]"]):
    """Runs each body as one Ray task."""

    def __init__(
        self, where: Ray, limiter: anyio.CapacityLimiter | None, files: ValueFiles | None = None
    ) -> None:
        super().__init__(limiter, files)
        self._where = where
        self.place = f"ray: {where.address or 'local'}"
        self._remote: Any = None  # Any: ray's remote functions are untyped
        self._started = False
        self._starting = anyio.Lock()

    async def _ready(self) -> Any:
        async with self._starting:
            if self._remote is None:
                if not ray.is_initialized():
                    start = partial(ray.init, address=self._where.address, logging_level=logging.WARNING)
                    await anyio.to_thread.run_sync(start)
                    self._started = True
                self._remote = ray.remote(max_retries=0)(call_pickled)
        return self._remote

    async def _submit(self, label: str, request: bytes, spill: str) -> tuple[Any, Future[bytes]]:
        remote = await self._ready()
        options: dict[str, Any] = {
            "name": label,
            "num_cpus": self._where.num_cpus,
            "num_gpus": self._where.num_gpus,
        }
        if self._where.resources:
            options["resources"] = dict(self._where.resources)
        ref = remote.options(**options).remote(request, 0, spill)
        note_job(f"ray task {ref.task_id().hex()}")
        return ref, ref.future()

    async def _on_this_machine(self) -> bool:
        await self._ready()
        nodes: list[dict[str, Any]] = await anyio.to_thread.run_sync(ray.nodes)
        alive = [node for node in nodes if node.get("Alive")]
        return bool(alive) and all(
            node.get("NodeManagerHostname") in THIS_MACHINE or node.get("NodeManagerAddress") in THIS_MACHINE
            for node in alive
        )

    async def _answer(self, handle: tuple[Any, Future[bytes]]) -> bytes:
        _, future = handle
        await wait_done(future)
        return future.result()  # at hand: the future is done

    async def _cancel(self, handle: tuple[Any, Future[bytes]]) -> None:
        ref, _ = handle
        await anyio.to_thread.run_sync(partial(ray.cancel, ref, force=True), abandon_on_cancel=True)

    async def aclose(self) -> None:
        """Shut down the Ray this runner started, if it did: the run is over."""
        if self._started:
            self._started = False
            self._remote = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ray.shutdown)
