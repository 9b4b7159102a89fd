"""Rate limits: channels by class keyword or task name, several channels per task, fresh nodes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from asyncflow import RequiresList, SinkTask, Task

# Gpu and Total serve test_scheduler.py too; ACTIVE counts their bodies running at once.
from .test_scheduler import ACTIVE, Gpu, Total, _busy


class GpuMem(Task, channel=["gpu", "mem"]):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await _busy(0.02)
        return -self.i


class Gather(SinkTask):
    items: RequiresList[int]

    def build_task(self, n: int, both: bool = False) -> None:
        self.items = [Gpu(i) for i in range(n)] + ([GpuMem(i) for i in range(n)] if both else [])


@pytest.fixture(autouse=True)
def _reset() -> None:
    ACTIVE.update(now=0, peak=0)


async def test_rate_limit_caps_concurrency(cache_dir: Path) -> None:
    with anyio.fail_after(20):
        await Gather(12).run(cache_dir=cache_dir, rate_limits={"gpu": 3})
    assert ACTIVE["peak"] == 3


async def test_task_on_several_limited_channels_holds_all(cache_dir: Path) -> None:
    with anyio.fail_after(20):
        await Gather(6, both=True).run(cache_dir=cache_dir, rate_limits={"gpu": 4, "mem": 1})
    assert ACTIVE["peak"] <= 4


BY_CHANNEL: dict[str, list[int]] = {}  # channel -> [running now, peak]


class OnChannels(Task):
    """Sleeps a little on the channels it is given (a class per channel set, below)."""

    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        channels = type(self).__af_options__.channels
        for ch in channels:
            now = BY_CHANNEL.setdefault(ch, [0, 0])
            now[0] += 1
            now[1] = max(now[1], now[0])
        try:
            await anyio.sleep(0.001 * (self.i % 4))
        finally:
            for ch in channels:
                BY_CHANNEL[ch][0] -= 1
        return self.i


class OnA(OnChannels, channel="a"):
    pass


class OnB(OnChannels, channel="b"):
    pass


class OnAB(OnChannels, channel=["a", "b"]):
    pass


class Mixed(SinkTask):
    items: RequiresList[int]

    def build_task(self, n: int) -> None:
        kinds = (OnA, OnAB, OnB, OnAB, OnA)
        self.items = [kinds[i % len(kinds)](i) for i in range(n)]


async def test_nodes_on_overlapping_limited_channels_all_run_within_limits(cache_dir: Path) -> None:
    BY_CHANNEL.clear()
    with anyio.fail_after(30):  # a node parked on a full channel must never be forgotten
        _, stats = await Mixed(150).run_with_stats(cache_dir=cache_dir, rate_limits={"a": 2, "b": 1})
    assert stats.run == 151
    assert BY_CHANNEL["a"][1] == 2
    assert BY_CHANNEL["b"][1] == 1


async def test_nodes_waiting_for_a_slot_do_not_hold_tasks(cache_dir: Path) -> None:
    seen: list[int] = []

    class Probe(Gpu):
        async def run_task(self) -> int:
            seen.append(_tasks_alive())
            await _busy(0.001)
            return self.i

    class ManyProbes(SinkTask):
        items: RequiresList[int]

        def build_task(self, n: int) -> None:
            self.items = [Probe(i) for i in range(n)]

    with anyio.fail_after(30):
        await ManyProbes(400).run(
            cache_dir=cache_dir, detect_source_change=False, rate_limits={Probe.task_name: 2}
        )
    assert ACTIVE["peak"] == 2
    assert len(seen) == 400
    assert max(seen) < 40, max(seen)  # not a task per node waiting for the channel's 2 slots


def _tasks_alive() -> int:
    """How many tasks the event loop has now (asyncio or trio)."""
    import sniffio

    if sniffio.current_async_library() == "asyncio":
        import asyncio

        return len(asyncio.all_tasks())
    import trio

    count, todo = 0, [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        count += 1
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count


async def test_class_channel_named_by_task_name(cache_dir: Path) -> None:
    with anyio.fail_after(20):
        await Gather(8).run(cache_dir=cache_dir, rate_limits={Gpu.task_name: 2})
    assert ACTIVE["peak"] == 2


async def test_fresh_nodes_do_not_wait_for_limits(cache_dir: Path) -> None:
    await Total(5).run(cache_dir=cache_dir)
    ACTIVE.update(now=0, peak=0)
    with anyio.fail_after(5):
        value, stats = await Total(5).run_with_stats(cache_dir=cache_dir, rate_limits={"gpu": 1})
    assert value == 10
    assert stats.run == 0
    assert ACTIVE["peak"] == 0


# The channel class keyword (one channel or several).

OVERLAP: Counter[str] = Counter()


async def _count_overlap(group: str) -> None:
    OVERLAP[group] += 1
    OVERLAP[f"{group}-max"] = max(OVERLAP[f"{group}-max"], OVERLAP[group])
    for _ in range(20):  # let every other ready body start, if it may
        await anyio.lowlevel.checkpoint()
    OVERLAP[group] -= 1


class OnTwoChannels(Task, channel=["af-test-a", "af-test-b"]):
    def build_task(self, group: str, i: int) -> None:
        self.group = group

    async def run_task(self) -> None:
        await _count_overlap(self.group)


class OnOneChannel(Task, channel="af-test-c"):
    def build_task(self, group: str, i: int) -> None:
        self.group = group

    async def run_task(self) -> None:
        await _count_overlap(self.group)


class Fan(SinkTask[[str, str, int]]):
    deps: RequiresList[None]

    def build_task(self, kind: str, group: str, n: int) -> None:
        cls = OnTwoChannels if kind == "two" else OnOneChannel
        self.deps = [cls(group, i) for i in range(n)]


@pytest.mark.parametrize(
    ("kind", "limits", "expect_max"),
    [
        pytest.param("two", {}, None, id="two-unlimited"),
        pytest.param("two", {"af-test-a": 1}, 1, id="two-first-channel"),
        pytest.param("two", {"af-test-b": 1}, 1, id="two-second-channel"),
        pytest.param("two", {f"{__name__}.OnTwoChannels": 1}, 1, id="two-task-name-channel"),
        pytest.param("two", {"af-test-a": 2, "af-test-b": 5}, 2, id="two-both-limited"),
        pytest.param("one", {}, None, id="one-unlimited"),
        pytest.param("one", {"af-test-c": 1}, 1, id="one-string-channel"),
        pytest.param("one", {"af-test-a": 1}, None, id="one-other-channel"),
    ],
)
async def test_channel_keyword_is_honoured_by_rate_limits(
    cache_dir: Path, kind: str, limits: dict[str, int], expect_max: int | None
) -> None:
    group = str(cache_dir)
    with anyio.fail_after(30):
        _, stats = await Fan(kind, group, 6).run_with_stats(cache_dir=cache_dir, rate_limits=limits)
    assert stats.run == 7
    if expect_max is None:
        assert OVERLAP[f"{group}-max"] > 1  # the measurement can see overlap
    else:
        assert OVERLAP[f"{group}-max"] == expect_max
