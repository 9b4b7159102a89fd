"""The scheduler: executors, failures, cancellation, retries, timeouts, stats."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncflow import (
    RequiresList,
    Task,
    TaskFailedError,
    WorkflowFailedError,
)

ACTIVE: dict[str, int] = {"now": 0, "peak": 0}
CALLS: dict[str, int] = {}


async def _busy(seconds: float) -> None:
    ACTIVE["now"] += 1
    ACTIVE["peak"] = max(ACTIVE["peak"], ACTIVE["now"])
    try:
        await anyio.sleep(seconds)
    finally:
        ACTIVE["now"] -= 1


class Gpu(Task, channel="gpu"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await _busy(0.02)
        return self.i


class Total(Task):
    items: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.items = [Gpu(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.items)


@pytest.fixture(autouse=True)
def _reset() -> None:
    ACTIVE.update(now=0, peak=0)
    CALLS.clear()


class SyncSquare(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> tuple[int, int, int]:
        return self.i * self.i, os.getpid(), threading.get_ident()


class SyncAll(Task):
    parts: RequiresList[tuple[int, int, int]]

    def build_task(self, n: int) -> None:
        self.parts = [SyncSquare(i) for i in range(n)]

    def run_task(self) -> list[tuple[int, int, int]]:
        return self.parts


async def test_sync_bodies_run_in_threads(cache_dir: Path) -> None:
    parts = await SyncAll(4).run(cache_dir=cache_dir)
    assert [p[0] for p in parts] == [0, 1, 4, 9]
    assert all(p[1] == os.getpid() for p in parts)
    assert all(p[2] != threading.get_ident() for p in parts)


async def test_process_executor(cache_dir: Path) -> None:
    with anyio.fail_after(60):
        parts = await SyncAll(3).run(cache_dir=cache_dir, executor="process", max_workers=2)
    assert [p[0] for p in parts] == [0, 1, 4]
    assert all(p[1] != os.getpid() for p in parts)


async def test_user_executor(cache_dir: Path) -> None:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mine") as pool:
        parts = await SyncAll(3).run(cache_dir=cache_dir, executor=pool)
    assert [p[0] for p in parts] == [0, 1, 4]


class Boom(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        if self.i % 2:
            raise ValueError(f"odd {self.i}")
        CALLS[f"boom{self.i}"] = CALLS.get(f"boom{self.i}", 0) + 1
        return self.i


class BoomAll(Task):
    items: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.items = [Boom(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.items)


async def test_failure_names_task_and_chains_cause(cache_dir: Path) -> None:
    with pytest.raises(TaskFailedError) as info:
        await Boom(1).run(cache_dir=cache_dir)
    assert str(info.value).startswith("Boom(1) failed: ValueError: odd 1")
    assert info.value.task == "Boom(1)"
    assert isinstance(info.value.__cause__, ValueError)


async def test_on_error_continue_keeps_successes_and_raises_all(cache_dir: Path) -> None:
    with pytest.raises(WorkflowFailedError) as info:
        await BoomAll(6).run(cache_dir=cache_dir, on_error="continue")
    assert sorted(e.task for e in info.value.exceptions) == ["Boom(1)", "Boom(3)", "Boom(5)"]
    # The even leaves were computed and kept: a second run reuses them.
    with pytest.raises(WorkflowFailedError):
        _ = await BoomAll(6).run(cache_dir=cache_dir, on_error="continue")
    assert CALLS == {"boom0": 1, "boom2": 1, "boom4": 1}
    assert await Boom(2).result(cache_dir=cache_dir) == 2


class Flaky(Task, retries=2, retry_delay=0.01):
    def build_task(self, fails: int) -> None:
        self.fails = fails

    async def run_task(self) -> str:
        CALLS["flaky"] = CALLS.get("flaky", 0) + 1
        if CALLS["flaky"] <= self.fails:
            raise RuntimeError("not yet")
        return "ok"


async def test_retries(cache_dir: Path) -> None:
    value, stats = await Flaky(2).run_with_stats(cache_dir=cache_dir)
    assert value == "ok"
    assert stats[Flaky.task_name].retried == 2
    CALLS.clear()
    with pytest.raises(TaskFailedError, match="after 3 attempts"):
        await Flaky(5).run(cache_dir=cache_dir)


# A result that cannot be stored fails at once, saying why: retrying would return the same.


def _attempt(log: str) -> None:
    # A file, not a dict: bodies run in worker processes too.
    with open(log, "a") as f:
        f.write("attempt\n")


async def _helper() -> int:
    return 1


class ForgetsAwait(Task, retries=2, retry_delay=0):
    def build_task(self, log: str) -> None:
        self.log = log

    async def run_task(self) -> Any:
        _attempt(self.log)
        return _helper()  # the mistake: `return await _helper()`


class SyncForgetsAwait(Task, retries=2, retry_delay=0):
    def build_task(self, log: str) -> None:
        self.log = log

    def run_task(self) -> Any:
        _attempt(self.log)
        return _helper()


class YieldsInstead(Task, retries=2, retry_delay=0):
    def build_task(self, log: str) -> None:
        self.log = log

    def run_task(self) -> Any:
        _attempt(self.log)
        return (i for i in range(3))


class ReturnsLock(Task, retries=2, retry_delay=0):
    def build_task(self, log: str) -> None:
        self.log = log

    def run_task(self) -> Any:
        _attempt(self.log)
        return threading.Lock()


COROUTINE = "returned a coroutine, which cannot be stored: did you forget `await`?"
GENERATOR = "returned a generator, which cannot be stored: return a list(...) instead"
LOCK = (
    "returned a _thread.lock, which cannot be stored: it does not pickle "
    "(TypeError: cannot pickle '_thread.lock' object); return plain data instead"
)


@pytest.mark.parametrize(
    ("cls", "message", "executor"),
    [
        (ForgetsAwait, COROUTINE, "thread"),  # an async body, on the loop
        (SyncForgetsAwait, COROUTINE, "thread"),
        (YieldsInstead, GENERATOR, "thread"),
        (ReturnsLock, LOCK, "thread"),
        (ReturnsLock, LOCK, "user"),
    ],
)
async def test_an_unstorable_result_in_this_process(
    cache_dir: Path, tmp_path: Path, cls: type[Task[Any, Any]], message: str, executor: str
) -> None:
    log = tmp_path / "log"
    task = cls(str(log))
    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(TaskFailedError) as info:
        with anyio.fail_after(30):
            await task.run(cache_dir=cache_dir, executor=pool if executor == "user" else "thread")
    assert str(info.value) == f"{task!r} {message}"
    assert info.value.task == repr(task)
    assert isinstance(info.value.__cause__, TypeError)  # the pickling error
    assert log.read_text() == "attempt\n"  # not retried


@pytest.mark.parametrize(("cls", "message"), [(SyncForgetsAwait, COROUTINE), (ReturnsLock, LOCK)])
async def test_an_unstorable_result_in_a_worker_process(
    cache_dir: Path, tmp_path: Path, cls: type[Task[Any, Any]], message: str
) -> None:
    log = tmp_path / "log"
    task = cls(str(log))
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await task.run(cache_dir=cache_dir, executor="process")
    assert str(info.value) == f"{task!r} {message}"
    assert log.read_text() == "attempt\n"


async def test_an_unstorable_result_in_a_process_pool(cache_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    task = ReturnsLock(str(log))
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(max_workers=1, mp_context=context) as pool,
        pytest.raises(TaskFailedError) as info,
    ):
        with anyio.fail_after(60):
            await task.run(cache_dir=cache_dir, executor=pool)
    assert str(info.value) == f"{task!r} {LOCK}"
    assert "cannot pickle '_thread.lock' object" in str(info.value.__cause__)  # the remote traceback
    assert log.read_text() == "attempt\n"


class Slow(Task, timeout=0.05):
    async def run_task(self) -> None:
        await anyio.sleep(5)


async def test_timeout(cache_dir: Path) -> None:
    with anyio.fail_after(5), pytest.raises(TaskFailedError, match=r"Slow\(\) timed out after 0.05 s"):
        await Slow().run(cache_dir=cache_dir)


class Started(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        CALLS[f"start{self.i}"] = 1
        await anyio.sleep(0 if self.i == 0 else 30)
        return self.i


class StartedAll(Task):
    items: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.items = [Started(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.items)


async def test_cancellation_by_caller_keeps_finished_results(cache_dir: Path) -> None:
    with anyio.move_on_after(0.5) as scope:
        await StartedAll(3).run(cache_dir=cache_dir)
    assert scope.cancelled_caught
    assert len(CALLS) == 3
    assert await Started(0).result(cache_dir=cache_dir) == 0  # finished before the cancel
    from asyncflow import CacheError

    with pytest.raises(CacheError):
        await Started(1).result(cache_dir=cache_dir)  # cancelled: nothing stored


async def test_stats_per_class(cache_dir: Path) -> None:
    _, stats = await Total(4).run_with_stats(cache_dir=cache_dir)
    assert stats[Gpu.task_name].run == 4
    assert stats[Total.task_name].run == 1
    assert len(stats[Gpu.task_name].durations) == 4
    _, stats = await Total(4).run_with_stats(cache_dir=cache_dir)
    assert stats[Gpu.task_name].reused == 4
    assert stats.run == 0


BARRIER: dict[str, Any] = {}


class Meet(Task):
    """Finishes only once every Meet of the run has started: needs them all at once."""

    def build_task(self, i: int, n: int) -> None:
        self.n = n

    async def run_task(self) -> int:
        BARRIER["started"] += 1
        if BARRIER["started"] == self.n:
            BARRIER["event"].set()
        await BARRIER["event"].wait()
        return 1


class MeetAll(Task):
    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [Meet(i, n) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)


@pytest.mark.parametrize("n", [2, 300])
async def test_waiting_bodies_all_run_at_once(cache_dir: Path, n: int) -> None:
    BARRIER.update(started=0, event=anyio.Event())
    with anyio.fail_after(10):
        assert await MeetAll(n).run(cache_dir=cache_dir) == n


THREADS = {"now": 0, "peak": 0}
THREADS_LOCK = threading.Lock()


class Blocking(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        with THREADS_LOCK:
            THREADS["now"] += 1
            THREADS["peak"] = max(THREADS["peak"], THREADS["now"])
        time.sleep(0.05)
        with THREADS_LOCK:
            THREADS["now"] -= 1
        return self.i


class BlockingAll(Task):
    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [Blocking(i) for i in range(n)]

    def run_task(self) -> int:
        return sum(self.parts)


async def test_max_workers_caps_threads(cache_dir: Path) -> None:
    THREADS.update(now=0, peak=0)
    with anyio.fail_after(20):
        assert await BlockingAll(8).run(cache_dir=cache_dir, max_workers=2) == 28
    assert THREADS["peak"] == 2


class Forever(Task):
    def run_task(self) -> int:
        time.sleep(60)
        return 1


async def test_cancelling_a_process_body_ends_its_worker(cache_dir: Path) -> None:
    started = time.monotonic()
    with anyio.move_on_after(2) as scope:
        await Forever().run(cache_dir=cache_dir, executor="process")
    assert scope.cancelled_caught
    assert time.monotonic() - started < 10  # not the body's 60 s


MAIN_SCRIPT = """
import sys
from asyncflow import Task, RequiresList

class Square(Task):  # defined in __main__: workers get it by value
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i * self.i

class Total(Task):
    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [Square(i) for i in range(n)]

    def run_task(self) -> int:
        return sum(self.parts)

if __name__ == "__main__":
    print(Total(5).run_graph(cache_dir=sys.argv[1], executor="process"))
"""


def test_process_executor_with_tasks_in_main(tmp_path: Path) -> None:
    script = tmp_path / "taskfile.py"
    script.write_text(MAIN_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "30"
