"""What the Dask and Ray runners share: one body as one engine task, awaited without a thread.

The engine's worker runs `process.call_pickled` on the cloudpickled task, exactly as a
worker process does, and the answer comes back as a pickled `payload.Answer`, turned
into the result or the body's exception by `process.outcome_of`. An engine's worker has a
``sys.path`` of its own, so the modules a task class comes from travel by value unless
they are installed (site-packages, the standard library) or asyncflow's own.

A future of the engine is awaited through its done-callback, which must not block the
engine's thread: it queues the wakeup for one thread that wakes each run's loop (asyncio
or trio) by its token. No thread waits per body. Cancelling the run cancels the
engine's task (shielded, bounded in time) before the cancellation goes on.
"""

from __future__ import annotations

import contextlib
import math
import queue
import site
import socket
import sys
import sysconfig
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from .._cache import blobs
from .._errors import OptionError, TaskFailedError
from .._tally import working
from .process import outcome_of

if TYPE_CHECKING:
    from types import ModuleType

    from .._task import Task
    from .base import Outcome
    from .values import ValueFiles

# Names of this machine, as engines name their workers' hosts: bodies there see the cache's files.
THIS_MACHINE = frozenset({"127.0.0.1", "localhost", "::1", socket.gethostname()})
CANCEL_WITHIN = 10.0  # seconds a cancelled run waits for the engine to take the cancel
H = TypeVar("H")  # the engine's handle of one submitted body


def missing_extra(placement: str, package: str, extra: str) -> OptionError:
    """The error for a placement whose engine is not installed, naming the extra to install."""
    return OptionError(
        f"{placement} needs the {package} package, which is not installed here: "
        f"pip install 'asyncflow[{extra}]'"
    )


class _Done(Protocol):
    def done(self) -> bool: ...

    def add_done_callback(self, fn: Any, /) -> None: ...  # Any: each engine's own callback type


async def wait_done(future: _Done) -> None:
    """Wait, without blocking the loop or holding a thread per body, until `future` is done."""
    if future.done():
        return
    done = anyio.Event()
    token = anyio.lowlevel.current_token()
    loop_thread = threading.get_ident()

    def on_done(_: object) -> None:
        if threading.get_ident() == loop_thread:  # done by the time the callback was added
            done.set()
        else:  # an engine's thread, which must not block (Ray's runs its I/O)
            _wakeups().put((token, done))

    future.add_done_callback(on_done)
    await done.wait()


_queue: queue.SimpleQueue[tuple[anyio.lowlevel.EventLoopToken, anyio.Event]] | None = None
_queue_lock = threading.Lock()


def _wakeups() -> queue.SimpleQueue[tuple[anyio.lowlevel.EventLoopToken, anyio.Event]]:
    """The queue of events to set in their loops, and the one thread that sets them."""
    global _queue
    with _queue_lock:
        if _queue is None:
            _queue = queue.SimpleQueue()
            # A daemon: it holds nothing, and waits for the next wakeup for as long as the process lives.
            threading.Thread(
                target=_wake, args=(_queue,), name="asyncflow-engine-wakeups", daemon=True
            ).start()
        return _queue


def _wake(wakeups: queue.SimpleQueue[tuple[anyio.lowlevel.EventLoopToken, anyio.Event]]) -> None:
    while True:
        token, event = wakeups.get()
        with contextlib.suppress(anyio.RunFinishedError):  # that run is over: nobody waits any more
            anyio.from_thread.run_sync(event.set, token=token)


_INSTALLED = tuple(
    Path(p).resolve()
    for p in {
        *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        *site.getsitepackages(),
        site.getusersitepackages(),
    }
)
_sent: dict[str, bool] = {}  # module name: whether it travels by value


def send_by_value(task: Task[Any, Any]) -> None:
    """Make the modules of `task`'s class and its bases travel by value unless installed.

    A class from ``__main__``, a taskfile, a notebook, a test module or a project that is
    not installed could not be imported by an engine's worker, which has a ``sys.path``
    of its own.
    """
    for cls in type(task).__mro__:
        name = cls.__module__
        if name not in _sent:
            module = sys.modules.get(name)
            _sent[name] = module is not None and not _installed(module)
            if _sent[name]:
                blobs.register_by_value(module)  # pyright: ignore[reportArgumentType]  # not None: checked


def _installed(module: ModuleType) -> bool:
    if module.__name__ == "__main__":
        return False
    if module.__name__.partition(".")[0] == "asyncflow":
        return True  # the workers import it: they run call_pickled
    origin = getattr(module, "__file__", None)
    if origin is None:
        return True  # built in
    path = Path(origin).resolve()
    return any(path.is_relative_to(root) for root in _INSTALLED)


class EngineRunner(Generic[H]):
    """Runs each body as one task of an engine; subclasses say how to submit, await and cancel.

    Attributes:
        place: the engine and its address, for the run history.
    """

    place: str

    def __init__(self, limiter: anyio.CapacityLimiter | None, files: ValueFiles | None = None) -> None:
        # max_workers (when given) bounds the bodies submitted at once.
        self._limiter = limiter or anyio.CapacityLimiter(math.inf)
        self._files = files  # the run's big values, for engines whose workers see this filesystem
        self._shared: bool | None = None

    async def run(self, task: Task[Any, Any]) -> Outcome:
        label = repr(task)
        send_by_value(task)
        files = self._files if await self._local() else None
        request = await anyio.to_thread.run_sync(blobs.dumps if files is None else files.dumps_task, task)
        spill = "" if files is None else files.spill_dir()
        async with self._limiter:
            handle = await self._submit(label, request, spill)
            working()  # as far as this process can tell: the engine may queue it
            try:
                data = await self._answer(handle)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + CANCEL_WITHIN
                    await self._cancel(handle)
                raise
            except Exception as exc:  # the engine lost it: a killed worker, a lost connection
                raise TaskFailedError(
                    f"{label} failed: {self.place} gave no answer: {type(exc).__name__}: {exc}", task=label
                ) from exc
        return await anyio.to_thread.run_sync(outcome_of, label, data, files)  # a big answer takes a while

    async def _local(self) -> bool:
        """Tell (once) whether every worker of the engine runs on this machine, so sees the cache's files."""
        if self._shared is None:
            self._shared = self._files is not None and await self._on_this_machine()
        return self._shared

    async def _on_this_machine(self) -> bool:
        """Whether every worker runs on this machine (big values then go by file, see `values.py`)."""
        return False

    async def _submit(self, label: str, request: bytes, spill: str) -> H:
        """Hand `request` (for ``call_pickled(request, 0, spill)``) to the engine under the name `label`."""
        raise NotImplementedError

    async def _answer(self, handle: H) -> bytes:
        """Wait for the submitted body's answer; raise what the engine raised."""
        raise NotImplementedError

    async def _cancel(self, handle: H) -> None:
        """Cancel the submitted body, queued or running, as far as the engine can."""
        raise NotImplementedError
