"""Bodies as tasks of a Dask cluster, each under its task's name in the dashboard.

A body is ``client.submit(call_pickled, request, key="Square(3)-<token>", pure=False)``:
Dask's dashboard groups keys by what precedes the token, so it shows ``Square(3)``.
Cancelling the run cancels its futures: queued bodies never start; a body already
running finishes in its worker's thread (Dask cannot interrupt a thread), and its
answer is dropped. A `Dask` given an address connects at first use and disconnects when
the run ends; a client given as such is the user's and stays open. The settings are in
`_placements.py`; what Dask and Ray share is in `engines.py`.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from .._capture import note_job
from .engines import THIS_MACHINE, EngineRunner, missing_extra, wait_done
from .process import call_pickled

try:
    import distributed as _distributed
except ImportError as exc:  # an optional extra
    raise missing_extra("Dask(...)", "dask.distributed", "dask") from exc

distributed: Any = _distributed  # Any: its types are partial, and strict mode would flag each use

if TYPE_CHECKING:
    from .._placements import Dask
    from .values import ValueFiles


class DaskRunner(EngineRunner[Any]):
    """Runs each body as one task of a Dask cluster."""

    def __init__(
        self, where: Dask, limiter: anyio.CapacityLimiter | None, files: ValueFiles | None = None
    ) -> None:
        super().__init__(limiter, files)
        self.place = f"dask: {where.address}"
        self._address = where.client if isinstance(where.client, str) else None
        self._client: Any = None if isinstance(where.client, str) else where.client
        self._connecting = anyio.Lock()

    async def _connected(self) -> Any:
        async with self._connecting:
            if self._client is None:
                assert self._address is not None, "asyncflow bug: a Dask placement without client or address"
                connect = partial(distributed.Client, self._address, set_as_default=False)
                self._client = await anyio.to_thread.run_sync(connect)
        return self._client

    async def _on_this_machine(self) -> bool:
        client = await self._connected()
        info: dict[str, Any] = await anyio.to_thread.run_sync(client.scheduler_info)
        workers: dict[str, Any] = info.get("workers", {})
        hosts = {urlsplit(address).hostname for address in workers}
        return bool(hosts) and hosts <= THIS_MACHINE

    async def _submit(self, label: str, request: bytes, spill: str) -> Any:
        client = await self._connected()
        key = f"{label}-{uuid.uuid4().hex}"
        note_job(f"key {key}")
        return client.submit(call_pickled, request, 0, spill, key=key, pure=False)

    async def _answer(self, handle: Any) -> bytes:
        await wait_done(handle)
        # The answer is fetched from the worker: a blocking call, off the loop.
        answer: bytes = await anyio.to_thread.run_sync(handle.result, abandon_on_cancel=True)
        handle.release()  # the scheduler forgets it now, not when a traceback lets go of it
        return answer

    async def _cancel(self, handle: Any) -> None:
        await anyio.to_thread.run_sync(handle.cancel, abandon_on_cancel=True)

    async def aclose(self) -> None:
        """Disconnect, if this runner connected: the run is over."""
        if self._address is not None and self._client is not None:
            client, self._client = self._client, None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(client.close)
