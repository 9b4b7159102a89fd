"""The garbage collector during runs: thresholds raised meanwhile, the caller's settings back after."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import anyio
import pytest

from asyncflow import Requires, Task
from asyncflow._collector import RUN_THRESHOLDS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CALLERS = (1234, 7, 9)  # lower than the run's first threshold, and not CPython's defaults
seen: list[tuple[int, ...]] = []  # the thresholds bodies saw
started = anyio.Event()


class Look(Task):
    """Notes the thresholds its body sees."""

    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        seen.append(gc.get_threshold())
        return self.i


class Fails(Task):
    """Fails once the thresholds are noted."""

    up: Requires[int]

    def build_task(self) -> None:
        self.up = Look(0)

    async def run_task(self) -> int:
        seen.append(gc.get_threshold())
        raise ValueError("boom")


class Hangs(Task):
    """Waits until cancelled."""

    def build_task(self) -> None:
        pass

    async def run_task(self) -> int:
        seen.append(gc.get_threshold())
        started.set()
        await anyio.sleep_forever()
        return 0


class Retunes(Task):
    """Sets thresholds of its own, as a caller's code running meanwhile may."""

    def build_task(self) -> None:
        pass

    async def run_task(self) -> int:
        gc.set_threshold(4321, 3, 2)
        return 0


@pytest.fixture(autouse=True)
def callers_settings() -> Iterator[None]:
    """Set the caller's thresholds for the test; put the process's own back after it."""
    global started
    before, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(*CALLERS)
    seen.clear()
    started = anyio.Event()
    yield
    gc.set_threshold(*before)
    if enabled:
        gc.enable()


async def test_raised_during_a_run_and_restored_after(cache_dir: Path) -> None:
    assert await Look(1).run(cache_dir=cache_dir) == 1
    assert seen == [RUN_THRESHOLDS]
    assert gc.get_threshold() == CALLERS
    assert gc.isenabled()


async def test_restored_after_a_failing_run(cache_dir: Path) -> None:
    with pytest.raises(Exception, match="boom"):
        await Fails().run(cache_dir=cache_dir)
    assert seen == [RUN_THRESHOLDS, RUN_THRESHOLDS]
    assert gc.get_threshold() == CALLERS


async def test_restored_after_a_cancelled_run(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: Hangs().run(cache_dir=cache_dir))
            await started.wait()
            tg.cancel_scope.cancel()
    assert seen == [RUN_THRESHOLDS]
    assert gc.get_threshold() == CALLERS


async def test_a_disabled_collector_is_left_alone(cache_dir: Path) -> None:
    gc.disable()
    await Look(2).run(cache_dir=cache_dir)
    assert seen == [CALLERS]
    assert not gc.isenabled()
    assert gc.get_threshold() == CALLERS


async def test_a_higher_threshold_of_the_callers_is_kept(cache_dir: Path) -> None:
    gc.set_threshold(RUN_THRESHOLDS[0] * 2, 10, 10)
    await Look(3).run(cache_dir=cache_dir)
    assert seen == [(RUN_THRESHOLDS[0] * 2, 10, 10)]
    assert gc.get_threshold() == (RUN_THRESHOLDS[0] * 2, 10, 10)


async def test_thresholds_set_during_the_run_stand(cache_dir: Path) -> None:
    await Retunes().run(cache_dir=cache_dir)
    assert gc.get_threshold() == (4321, 3, 2)


async def test_concurrent_runs_restore_once_the_last_ends(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: Hangs().run(cache_dir=cache_dir))
            await started.wait()
            await Look(4).run(cache_dir=cache_dir)  # starts and ends while the other runs
            assert gc.get_threshold() == RUN_THRESHOLDS
            tg.cancel_scope.cancel()
    assert gc.get_threshold() == CALLERS


def test_the_blocking_twin_restores_too(cache_dir: Path) -> None:
    with pytest.raises(Exception, match="boom"):
        Fails().run_graph(cache_dir=cache_dir)
    assert gc.get_threshold() == CALLERS
