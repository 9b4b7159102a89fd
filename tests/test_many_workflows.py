"""Several different workflows awaited at once in one event loop, each with its own
cache directory and rate limits: nothing leaks between them (cache, limits, stats)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncflow import CacheError, RequiresList, RunStats, Task

ACTIVE: dict[str, dict[str, int]] = {}


def _reset(*names: str) -> None:
    ACTIVE.clear()
    for name in names:
        ACTIVE[name] = {"now": 0, "peak": 0, "calls": 0}


async def _busy(name: str, seconds: float = 0.1) -> None:
    counts = ACTIVE[name]
    counts["now"] += 1
    counts["calls"] += 1
    counts["peak"] = max(counts["peak"], counts["now"])
    try:
        await anyio.sleep(seconds)
    finally:
        counts["now"] -= 1


# Workflow A: 4 nodes on channel "a" (limited to 1 below).
class StepA(Task, channel="a"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await _busy("a")
        return self.i


class SumA(Task):
    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [StepA(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)


# Workflow B: 6 nodes on channel "b" (limited to 3 below).
class StepB(Task, channel="b"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> str:
        await _busy("b")
        return str(self.i)


class JoinB(Task):
    parts: RequiresList[str]

    def build_task(self, n: int) -> None:
        self.parts = [StepB(i) for i in range(n)]

    async def run_task(self) -> str:
        return "".join(self.parts)


# Workflow C: 6 nodes on the channel "shared", which A's run limits to 1 and C's does not.
class StepC(Task, channel="shared"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await _busy("c")
        return self.i * self.i


class MaxC(Task):
    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [StepC(i) for i in range(n)]

    async def run_task(self) -> int:
        return max(self.parts)


OWN = {
    "a": {StepA.task_name, SumA.task_name},
    "b": {StepB.task_name, JoinB.task_name},
    "c": {StepC.task_name, MaxC.task_name},
}


def _cached_classes(cache_dir: Path) -> set[str]:
    with sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite") as db:
        return {name for (name,) in db.execute("SELECT DISTINCT task_name FROM nodes")}


async def _run_all(dirs: dict[str, Path]) -> tuple[dict[str, Any], dict[str, RunStats]]:
    values: dict[str, Any] = {}
    stats: dict[str, RunStats] = {}

    async def one(name: str, task: Task[..., Any], limits: dict[str, int]) -> None:
        values[name], stats[name] = await task.run_with_stats(cache_dir=dirs[name], rate_limits=limits)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a", SumA(4), {"a": 1, "shared": 1})
        tg.start_soon(one, "b", JoinB(6), {"b": 3})
        tg.start_soon(one, "c", MaxC(6), {})
    return values, stats


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {name: tmp_path / f"cache-{name}" for name in "abc"}


async def test_concurrent_workflows_keep_their_own_limits_caches_and_stats(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    _reset("a", "b", "c")
    with anyio.fail_after(10):
        values, stats = await _run_all(dirs)
    assert values == {"a": 6, "b": "012345", "c": 25}
    # Each run's limits held for its own nodes, and only for them.
    assert ACTIVE["a"]["peak"] == 1
    assert ACTIVE["b"]["peak"] == 3
    assert ACTIVE["c"]["peak"] == 6  # A's {"shared": 1} did not throttle C's "shared" nodes
    # Each run's stats name only its own classes.
    for name in "abc":
        assert set(stats[name]) == OWN[name], name
        assert stats[name].reused == 0
    assert stats["a"][StepA.task_name].run == 4
    assert stats["b"][StepB.task_name].run == 6
    assert stats["c"][StepC.task_name].run == 6
    # C was not slowed down by A's serial 4 x 0.1 s (timings only loosely bounded).
    assert stats["a"].elapsed >= 0.4
    assert stats["c"].elapsed < stats["a"].elapsed
    # Each cache directory holds only its own results; nothing went to the ambient cache.
    for name in "abc":
        assert _cached_classes(dirs[name]) == OWN[name], name
        data = dirs[name] / "asyncflow" / "data"
        assert not data.exists() or {p.name for p in data.iterdir()} <= OWN[name], name
    assert not (tmp_path / "ambient-cache").exists()

    # Again, all at once: each reuses its own cache and runs nothing.
    _reset("a", "b", "c")
    values2, stats2 = await _run_all(dirs)
    assert values2 == values
    for name in "abc":
        assert set(stats2[name]) == OWN[name]
        assert stats2[name].run == 0
        assert ACTIVE[name]["calls"] == 0


async def test_a_cache_dir_does_not_serve_another_workflows_results(dirs: dict[str, Path]) -> None:
    _reset("a", "b", "c")
    await _run_all(dirs)
    assert await StepA(0).result(cache_dir=dirs["a"]) == 0
    with pytest.raises(CacheError):
        await StepA(0).result(cache_dir=dirs["b"])
    with pytest.raises(CacheError):
        await StepC(1).result(cache_dir=dirs["a"])
    # Clearing one workflow's cache leaves the others fresh.
    await SumA.clear_all(cache_dir=dirs["a"])
    _reset("a", "b", "c")
    _, stats = await _run_all(dirs)
    assert stats["a"][SumA.task_name].run == 1
    assert stats["b"].run == 0
    assert stats["c"].run == 0
    assert ACTIVE["b"]["calls"] == ACTIVE["c"]["calls"] == 0


async def test_same_task_in_two_cache_dirs_at_once_runs_in_each(tmp_path: Path) -> None:
    # Single flight is per cache directory: the same node in two caches is computed in each.
    _reset("a")
    d1, d2 = tmp_path / "one", tmp_path / "two"
    results: dict[Path, RunStats] = {}

    async def one(cache_dir: Path) -> None:
        _, results[cache_dir] = await SumA(3).run_with_stats(cache_dir=cache_dir, rate_limits={"a": 3})

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, d1)
        tg.start_soon(one, d2)
    assert results[d1][StepA.task_name].run == 3
    assert results[d2][StepA.task_name].run == 3
    assert ACTIVE["a"]["calls"] == 6
