"""Tasks a body awaits join the body's run: one cache, limits, workers, single flight, cancellation."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

import asyncflow
from asyncflow import AsyncflowError, CycleError, File, OptionError, Requires, Task, TaskFailedError
from asyncflow._explain import explain

RAN: Counter[str] = Counter()
LIVE = {"now": 0, "peak": 0}
WORKING = {"now": 0, "peak": 0}  # plain def bodies working (not waiting) at once, in threads
WORKING_LOCK = threading.Lock()


def work() -> None:
    """Work in a plain def body for long enough that bodies allowed to work at once overlap."""
    with WORKING_LOCK:
        WORKING["now"] += 1
        WORKING["peak"] = max(WORKING["peak"], WORKING["now"])
    time.sleep(0.05)
    with WORKING_LOCK:
        WORKING["now"] -= 1


class Listing(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> list[int]:
        return list(range(self.n))


class Square(Task, channel="squares"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        RAN[f"Square({self.i})"] += 1
        LIVE["now"] += 1
        LIVE["peak"] = max(LIVE["peak"], LIVE["now"])
        try:
            await anyio.sleep(0.001)
        finally:
            LIVE["now"] -= 1
        return self.i * self.i


class Elsewhere(Task, channel="elsewhere"):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> tuple[int, int]:
        return self.i, os.getpid()


class FarOut(Task):
    async def run_task(self) -> list[tuple[int, int]]:
        return await asyncflow.gather(*(Elsewhere(i) for i in range(3)))


class FanOut(Task):
    items: Requires[list[int]]

    def build_task(self, n: int) -> None:
        self.items = Listing(n)

    async def run_task(self) -> int:
        RAN["FanOut"] += 1
        squares = await asyncflow.gather(*(Square(i) for i in self.items))
        return sum(squares)


class OneByOne(Task, channel="squares"):
    """On the limited channel itself: it lends its slot while it awaits its children."""

    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> list[int]:
        return [await Square(i).run() for i in range(self.n)]


class ThreadFanOut(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    def run_task(self) -> int:  # a plain def: in a worker thread
        first = Square(0).run_graph()
        rest = asyncflow.gather_tasks(*(Square(i) for i in range(1, self.n)))
        return first + sum(rest)


class AwaitsSquare(Task):
    def build_task(self, tag: int) -> None:
        self.tag = tag

    async def run_task(self) -> int:
        return await Square(7).run()


class Together(Task):
    async def run_task(self) -> list[int]:
        return await asyncflow.gather(*(AwaitsSquare(tag) for tag in range(4)))


class ThreadSquare(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:  # a plain def, as its parent: it needs a worker thread too
        work()
        return self.i * self.i


class ThreadParent(Task):
    """Works, awaits its children from its thread, and works again."""

    def build_task(self, tag: int, n: int) -> None:
        self.tag = tag
        self.n = n

    def run_task(self) -> int:
        work()
        shared = ThreadSquare(0).run_graph()  # the same node for every parent
        own = asyncflow.gather_tasks(*(ThreadSquare(100 * self.tag + i) for i in range(1, self.n + 1)))
        work()
        return shared + sum(own)

    @staticmethod
    def expected(tag: int, n: int) -> int:
        return sum((100 * tag + i) ** 2 for i in range(1, n + 1))


class ThreadParents(Task):
    def build_task(self, parents: int, n: int) -> None:
        self.parents = parents
        self.n = n

    def run_task(self) -> int:
        return sum(asyncflow.gather_tasks(*(ThreadParent(tag, self.n) for tag in range(self.parents))))


class CatchesBroken(Task):
    """Goes on working after a task it awaited failed."""

    def build_task(self, tag: int) -> None:
        self.tag = tag

    def run_task(self) -> int:
        try:
            Broken().run_graph()
        except TaskFailedError:
            work()
            RAN[f"CatchesBroken({self.tag})"] += 1
            return self.tag
        raise AssertionError("Broken() did not fail")


class BothCatch(Task):
    async def run_task(self) -> list[int]:
        return await asyncflow.gather(CatchesBroken(0), CatchesBroken(1))


class Nap(Task):
    async def run_task(self) -> int:
        await anyio.sleep(0.5)
        return 1


class WaitsTooLong(Task, timeout=0.2):
    def run_task(self) -> int:
        return Nap().run_graph()


class GoesOnAfterATimeout(Task):
    async def run_task(self) -> int:
        with contextlib.suppress(TaskFailedError):  # it times out
            await WaitsTooLong().run()
        # Once Nap() is done, the abandoned body may go on (on trio its wait outlives it).
        await Nap().run()
        return await ThreadParent(2, 2).run()  # its bodies need the worker WaitsTooLong() lent


class ThreadOnSlow(Task):
    def run_task(self) -> int:
        return Slow(5).run_graph()


class SelfAwait(Task):
    async def run_task(self) -> int:
        return await SelfAwait().run()


class Ping(Task):
    async def run_task(self) -> int:
        return await Pong().run()


class Pong(Task):
    async def run_task(self) -> int:
        return await Ping().run()


class OtherCache(Task):
    def build_task(self, elsewhere: str) -> None:
        self.elsewhere = elsewhere

    async def run_task(self) -> int:
        return await Square(2).run(cache_dir=self.elsewhere)


class InProcess(Task):
    def run_task(self) -> int:
        return Square(3).run_graph()


class Slow(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        RAN[f"Slow({self.i})"] += 1
        if self.i >= 5:
            LIVE["now"] += 1
            try:
                await anyio.sleep(30)
            finally:
                LIVE["now"] -= 1
        return self.i


class SlowFanOut(Task):
    async def run_task(self) -> list[int]:
        return await asyncflow.gather(*(Slow(i) for i in range(10)))


class Broken(Task):
    async def run_task(self) -> int:
        raise ValueError("broken")


class OnBroken(Task):
    broken: Requires[int]

    def build_task(self, tag: int) -> None:
        self.broken = Broken()

    async def run_task(self) -> int:
        return self.broken


class AwaitsBroken(Task):
    def build_task(self, tag: int) -> None:
        self.tag = tag

    async def run_task(self) -> int:
        await anyio.sleep(0.2 * self.tag)  # 0: before Broken fails; 1: after
        return await OnBroken(self.tag).run()


class BothWays(Task):
    async def run_task(self) -> list[int]:
        return await asyncflow.gather(AwaitsBroken(0), AwaitsBroken(1))


class Size(Task):
    def build_task(self, path: File) -> None:
        self.path = path

    def run_task(self) -> int:
        RAN[f"Size({self.path.path.name})"] += 1
        return len(self.path.path.read_text())


class Sizes(Task):
    """Fans out over the files of a folder: the folder's listing is not an input, their content is."""

    def build_task(self, folder: str) -> None:
        self.folder = folder

    async def run_task(self) -> int:
        RAN["Sizes"] += 1
        names = sorted([str(p) async for p in anyio.Path(self.folder).iterdir()])
        return sum(await asyncflow.gather(*(Size(File(p)) for p in names)))


class Middle(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        RAN[f"Middle({self.i})"] += 1
        return sum(await asyncflow.gather(Square(2 * self.i), Square(2 * self.i + 1)))


class Outer(Task):
    async def run_task(self) -> int:
        RAN["Outer"] += 1
        return sum(await asyncflow.gather(*(Middle(i) for i in range(4))))


def _unkeepable() -> type[Task[Any, Any]]:
    class Local(Task):  # defined in a function: its class cannot be pickled by reference
        async def run_task(self) -> int:
            return 5

    return Local


class AwaitsLocal(Task):
    async def run_task(self) -> int:
        RAN["AwaitsLocal"] += 1
        return await _unkeepable()().run()


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    RAN.clear()
    LIVE.update(now=0, peak=0)
    WORKING.update(now=0, peak=0)


async def test_a_fan_out_over_an_upstream_list_joins_the_run(cache_dir: Path) -> None:
    n = 1000
    value, stats = await FanOut(n).run_with_stats(cache_dir=cache_dir, rate_limits={"squares": 3})
    assert value == sum(i * i for i in range(n))
    assert stats[Square.task_name].run == n  # counted in the run's own stats
    assert LIVE["peak"] <= 3  # the run's limit holds for the nodes found while it ran
    assert all(RAN[f"Square({i})"] == 1 for i in range(n))
    # Run again: the parent is fresh, so nothing runs and nothing is awaited.
    RAN.clear()
    value, stats = await FanOut(n).run_with_stats(cache_dir=cache_dir)
    assert value == sum(i * i for i in range(n))
    assert (stats.run, sum(RAN.values())) == (0, 0)


async def test_children_already_cached_are_reused(cache_dir: Path) -> None:
    await asyncflow.gather(*(Square(i) for i in range(5)), cache_dir=cache_dir)  # outside a run
    RAN.clear()
    value, stats = await FanOut(8).run_with_stats(cache_dir=cache_dir)
    assert value == sum(i * i for i in range(8))
    assert stats[Square.task_name].reused == 5
    assert stats[Square.task_name].run == 3
    assert set(RAN) == {"FanOut", "Square(5)", "Square(6)", "Square(7)"}


async def test_a_task_several_bodies_await_at_once_runs_once(cache_dir: Path) -> None:
    # The first body to await it plans it while the others await it too.
    value, stats = await Together().run_with_stats(cache_dir=cache_dir)
    assert value == [49] * 4
    assert RAN["Square(7)"] == 1
    assert (stats[Square.task_name].run, stats[Square.task_name].reused) == (1, 0)


async def test_a_parent_holding_the_only_slot_lends_it_to_its_children(cache_dir: Path) -> None:
    with anyio.fail_after(20):
        value = await OneByOne(5).run(cache_dir=cache_dir, rate_limits={"squares": 1})
    assert value == [i * i for i in range(5)]
    assert LIVE["peak"] == 1


def test_a_thread_body_joins_the_run_through_the_blocking_twins(cache_dir: Path) -> None:
    value, stats = ThreadFanOut(4).run_graph_with_stats(cache_dir=cache_dir)
    assert value == 0 + 1 + 4 + 9
    assert stats[Square.task_name].run == 4  # in the same run: its stats count them


async def test_a_thread_body_lends_its_worker_to_the_tasks_it_awaits(cache_dir: Path) -> None:
    # Its children are plain def bodies too: with one worker, they run while it waits.
    with anyio.fail_after(20):
        value = await ThreadParent(1, 4).run(cache_dir=cache_dir, max_workers=1)
    assert value == ThreadParent.expected(1, 4)
    assert WORKING["peak"] == 1


async def test_at_most_max_workers_thread_bodies_work_at_once(cache_dir: Path) -> None:
    with anyio.fail_after(20):
        value = await ThreadParent(1, 8).run(cache_dir=cache_dir, max_workers=2)
    assert value == ThreadParent.expected(1, 8)
    assert WORKING["peak"] == 2  # the waiting parent is not counted, and nothing more works


async def test_more_waiting_thread_bodies_than_workers_finish(cache_dir: Path) -> None:
    # Five bodies wait at once (the top one and its four parents) with two workers.
    with anyio.fail_after(30):
        value, stats = await ThreadParents(4, 3).run_with_stats(cache_dir=cache_dir, max_workers=2)
    assert value == sum(ThreadParent.expected(tag, 3) for tag in range(4))
    assert stats[ThreadSquare.task_name].run == 1 + 4 * 3  # ThreadSquare(0) once, for all
    assert WORKING["peak"] <= 2


async def test_a_thread_body_takes_its_worker_back_after_a_failure(cache_dir: Path) -> None:
    # Both go on working after Broken() fails: one after the other, as max_workers=1 says.
    with anyio.fail_after(20), pytest.raises(asyncflow.WorkflowFailedError) as caught:
        await BothCatch().run(cache_dir=cache_dir, max_workers=1, on_error="continue")
    assert [str(e) for e in caught.value.exceptions] == ["Broken() failed: ValueError: broken"]
    assert RAN == {"CatchesBroken(0)": 1, "CatchesBroken(1)": 1}
    assert WORKING["peak"] == 1


async def test_a_thread_body_timing_out_while_it_waits_leaves_the_worker_to_others(
    cache_dir: Path,
) -> None:
    # Abandoned while its slot was lent, it ends holding none: nothing given back twice.
    with anyio.fail_after(20), pytest.raises(asyncflow.WorkflowFailedError) as caught:
        await GoesOnAfterATimeout().run(cache_dir=cache_dir, max_workers=1, on_error="continue")
    assert [str(e) for e in caught.value.exceptions] == ["WaitsTooLong() timed out after 0.2 s"]
    assert await GoesOnAfterATimeout().result(cache_dir=cache_dir) == ThreadParent.expected(2, 2)
    assert WORKING["peak"] == 1


async def test_cancelling_a_run_while_a_thread_body_lends_its_worker(cache_dir: Path) -> None:
    with anyio.fail_after(20), anyio.move_on_after(0.5) as scope:
        await ThreadOnSlow().run(cache_dir=cache_dir, max_workers=1)
    assert scope.cancelled_caught  # and nothing else, though the body's worker was lent
    assert LIVE["now"] == 0


@pytest.mark.parametrize(
    ("task", "path"),
    [(SelfAwait(), "SelfAwait() -> SelfAwait()"), (Ping(), "Pong() -> Ping() -> Pong()")],
)
async def test_awaiting_itself_is_a_cycle_error_not_a_deadlock(
    cache_dir: Path, task: Task[Any, Any], path: str
) -> None:
    with anyio.fail_after(10), pytest.raises(TaskFailedError) as caught:
        await task.run(cache_dir=cache_dir)
    cause = caught.value.__cause__  # the body that closed the cycle failed with it
    assert isinstance(cause, CycleError)
    assert path in str(cause)
    assert len(cause.cycle) == path.count("->")


async def test_options_against_the_run_are_refused(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TaskFailedError) as caught:
        await OtherCache(str(tmp_path / "other")).run(cache_dir=cache_dir)
    assert isinstance(caught.value.__cause__, OptionError)
    assert "cache_dir" in str(caught.value.__cause__)
    assert "leave the option out" in str(caught.value.__cause__)


@pytest.mark.parametrize(
    "options",
    [{"executor": "process"}, {"prefixes": {InProcess.task_name: ["env"]}}],
    ids=["process", "job-prefix"],
)
async def test_a_body_in_another_process_cannot_join(cache_dir: Path, options: dict[str, Any]) -> None:
    with pytest.raises(TaskFailedError) as caught:
        await InProcess().run(cache_dir=cache_dir, **options)
    assert "cannot run tasks" in str(caught.value)
    assert isinstance(caught.value.__cause__, AsyncflowError) or "AsyncflowError" in str(caught.value)


async def test_awaiting_a_task_whose_upstream_failed_fails_instead_of_hanging(cache_dir: Path) -> None:
    # Under on_error="continue" nothing cancels the run: the awaiting body must not wait forever.
    with anyio.fail_after(10), pytest.raises(asyncflow.WorkflowFailedError) as caught:
        await BothWays().run(cache_dir=cache_dir, on_error="continue")
    messages = [str(e) for e in caught.value.exceptions]
    assert any("Broken() failed: ValueError: broken" in m for m in messages)
    assert any("cannot run: its upstream Broken() failed" in m for m in messages)


async def test_cancelling_mid_fan_out_keeps_finished_children(cache_dir: Path) -> None:
    with anyio.move_on_after(1.0) as scope:
        await SlowFanOut().run(cache_dir=cache_dir)
    assert scope.cancelled_caught
    assert LIVE["now"] == 0  # no body left running
    RAN.clear()
    kept = await asyncflow.gather(*(Slow(i) for i in range(5)), cache_dir=cache_dir)
    assert kept == list(range(5))
    assert not RAN  # each finished child was cached by the cancelled run


async def test_one_child_changing_reruns_only_it_and_its_parent(cache_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(1000):
        (folder / f"{i:04}.txt").write_text("x" * (i % 7))
    expected = sum(i % 7 for i in range(1000))
    assert await Sizes(str(folder)).run(cache_dir=cache_dir) == expected
    assert RAN["Sizes"] == 1
    assert sum(RAN.values()) == 1001
    RAN.clear()
    value, stats = await Sizes(str(folder)).run_with_stats(cache_dir=cache_dir)
    assert (value, stats.run, dict(RAN)) == (expected, 0, {})  # nothing ran, nothing was awaited
    assert stats[Size.task_name].reused == 1000  # the parent's record names them: reused with it
    (folder / "0007.txt").write_text("changed")
    value, stats = await Sizes(str(folder)).run_with_stats(cache_dir=cache_dir)
    assert value == expected - 0 + len("changed")
    assert dict(RAN) == {"Sizes": 1, "Size(0007.txt)": 1}
    assert (stats[Size.task_name].run, stats[Size.task_name].reused) == (1, 999)


async def test_a_parent_discovers_a_new_set_when_its_upstream_changes(cache_dir: Path) -> None:
    await FanOut(5).run(cache_dir=cache_dir)
    RAN.clear()
    assert await FanOut(7).run(cache_dir=cache_dir) == sum(i * i for i in range(7))
    assert set(RAN) == {"FanOut", "Square(5)", "Square(6)"}
    RAN.clear()
    assert await FanOut(5).run(cache_dir=cache_dir) == sum(i * i for i in range(5))
    assert not RAN  # FanOut(5)'s record still holds: its children are unchanged


async def test_a_cleared_child_makes_its_parent_stale_and_says_why(cache_dir: Path) -> None:
    await FanOut(4).run(cache_dir=cache_dir)
    statuses = {s.key: s for s in await explain(FanOut(4), cache_dir=cache_dir)}
    parent = statuses[FanOut(4).__af_key__]
    assert parent.state == "fresh"
    assert parent.awaited == tuple(Square(i).__af_key__ for i in range(4))
    assert statuses[Square(2).__af_key__].state == "fresh"  # shown with the graph
    await Square(2).clear(cache_dir=cache_dir)
    statuses = {s.key: s for s in await explain(FanOut(4), cache_dir=cache_dir)}
    assert statuses[FanOut(4).__af_key__].reason == "dynamic dependency Square(2) is stale"
    assert statuses[Square(2).__af_key__].reason == "no result"
    RAN.clear()
    assert await FanOut(4).run(cache_dir=cache_dir) == 0 + 1 + 4 + 9
    assert set(RAN) == {"FanOut", "Square(2)"}


async def test_nested_fan_outs_rerun_only_the_branch_that_changed(cache_dir: Path) -> None:
    assert await Outer().run(cache_dir=cache_dir) == sum(i * i for i in range(8))
    RAN.clear()
    _, stats = await Outer().run_with_stats(cache_dir=cache_dir)
    assert (stats.run, dict(RAN)) == (0, {})
    assert stats.reused == 1 + 4 + 8
    await Square(5).clear(cache_dir=cache_dir)
    assert await Outer().run(cache_dir=cache_dir) == sum(i * i for i in range(8))
    assert set(RAN) == {"Outer", "Middle(2)", "Square(5)"}


async def test_a_child_that_cannot_be_kept_makes_its_parent_run_every_time(cache_dir: Path) -> None:
    assert await AwaitsLocal().run(cache_dir=cache_dir) == 5
    assert await AwaitsLocal().run(cache_dir=cache_dir) == 5
    assert RAN["AwaitsLocal"] == 2  # when in doubt, compute: an unknown dependency is not an unchanged one
    (status,) = [s for s in await explain(AwaitsLocal(), cache_dir=cache_dir) if s.task == AwaitsLocal()]
    assert "kept by its key alone" in status.reason


async def test_a_child_whose_input_is_gone_is_not_an_error_when_its_parent_no_longer_awaits_it(
    cache_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "bb", "ccc"):
        (folder / f"{name}.txt").write_text(name)
    assert await Sizes(str(folder)).run(cache_dir=cache_dir) == 6
    (folder / "bb.txt").unlink()  # the listing changes: the parent awaits two children now
    RAN.clear()
    value, stats = await Sizes(str(folder)).run_with_stats(cache_dir=cache_dir)
    assert value == 4
    assert dict(RAN) == {"Sizes": 1}
    assert stats[Size.task_name].reused == 2
    statuses = {repr(s.task): s for s in await explain(Sizes(str(folder)), cache_dir=cache_dir)}
    assert statuses[f"Sizes({str(folder)!r})"].state == "fresh"


async def test_awaited_tasks_run_where_the_run_sends_their_channel(cache_dir: Path) -> None:
    prefixes = {"elsewhere": ["env", "AF_TEST_MARK=joined"]}  # a job prefix: a process per body
    found = await FarOut().run(cache_dir=cache_dir, prefixes=prefixes)
    assert [i for i, _ in found] == [0, 1, 2]
    assert all(pid != os.getpid() for _, pid in found)


async def test_live_progress_counts_the_tasks_found_while_the_run_goes_on(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncflow.progress")
    await FanOut(5).run(cache_dir=cache_dir, progress=True)  # off a terminal: log lines
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncflow.progress"]
    assert any(line.startswith(f"{Square.task_name}: 5/5 done (5 run") for line in lines)
    assert "7/7 done (7 run, 0 cached" in lines[-1]  # Listing, FanOut and the five it found
