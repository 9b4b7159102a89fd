"""The task model: names, bodies, infer_task_type, dedupe, task directories, clearing, result, twins."""

from __future__ import annotations

import inspect
import itertools
import threading
import types
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import asyncflow
from asyncflow import (
    Const,
    Requires,
    RequiresDict,
    RequiresList,
    SinkTask,
    SourceTask,
    Task,
    infer_task_type,
)

from .test_scheduler import Total
from .workflows import runs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


# Task classes (module level: runners in other processes import them).
# Num, ListOf and Record are used by test_requires.py too.


class Num(Task):
    """Return twice its argument."""

    def build_task(self, x: int) -> None:
        self.x = x

    async def run_task(self) -> int:
        return 2 * self.x


class ListOf(Task):
    xs: RequiresList[int]

    def build_task(self, n: int, as_tuple: bool = False) -> None:
        items = [Num(i) for i in range(n)] + [Const(-1)]
        self.xs = tuple(items) if as_tuple else items

    async def run_task(self) -> tuple[str, list[int]]:
        return type(self.xs).__name__, self.xs


class Record(Task):
    """A structured result to take items of."""

    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> dict[str, Any]:
        return {"k": self.n, "list": [self.n, self.n + 1], "a": {"b": {"c": self.n * 10}}}


class AsyncThread(Task):
    def build_task(self) -> None:
        pass

    async def run_task(self) -> int:
        return threading.get_ident()


class SyncThread(Task):
    def build_task(self) -> None:
        pass

    def run_task(self) -> int:
        return threading.get_ident()


class SyncAdd(Task):
    """A plain `def` body reading requirements."""

    a: Requires[int]
    items: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.a = Num(n)
        self.items = [Record(n)["k"], Const(1)]

    def run_task(self) -> int:
        return self.a + sum(self.items)


class Seven(SourceTask[int]):
    async def run_task(self) -> int:
        return 7


class SyncSource(SourceTask[str]):
    def run_task(self) -> str:
        return "source"


SINK_SEEN: list[str] = []


class Noted(Task):
    def build_task(self, tag: str) -> None:
        self.tag = tag

    async def run_task(self) -> str:
        SINK_SEEN.append(self.tag)
        return self.tag


class Sink(SinkTask[[str]]):
    one: Requires[str]
    many: RequiresList[str]
    named: RequiresDict[str, str]

    def build_task(self, prefix: str) -> None:
        self.one = Noted(f"{prefix}-one")
        self.many = [Noted(f"{prefix}-m{i}") for i in range(3)]
        self.named = {"x": Noted(f"{prefix}-x")}


class Outer:
    class Inner(Task):
        def build_task(self) -> None:
            pass

        async def run_task(self) -> str:
            return "inner"


@infer_task_type
class Typed(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> int:
        return self.n + 1


# Dedupe.

BUILDS: Counter[str] = Counter()


class Shared(Task):
    def build_task(self, tag: str) -> None:
        BUILDS[tag] += 1
        self.tag = tag

    async def run_task(self) -> int:
        return 1


class Left(Task):
    s: Requires[int]

    def build_task(self, tag: str) -> None:
        self.s = Shared(tag)

    async def run_task(self) -> int:
        return self.s + 10


class Right(Task):
    s: Requires[int]

    def build_task(self, tag: str) -> None:
        self.s = Shared(tag)

    async def run_task(self) -> int:
        return self.s + 100


class Diamond(Task):
    left: Requires[int]
    right: Requires[int]
    twice: RequiresList[int]

    def build_task(self, tag: str) -> None:
        self.left = Left(tag)
        self.right = Right(tag)
        self.twice = [Shared(tag), Shared(tag)]

    async def run_task(self) -> tuple[int, int, list[int]]:
        return self.left, self.right, self.twice


# Task directories.

STAMPS = itertools.count(1)


class Stamp(Task):
    """A new number every time it runs: clearing it makes its dependents see a change."""

    def build_task(self, tag: str) -> None:
        self.tag = tag

    async def run_task(self) -> int:
        return next(STAMPS)


def _use_directory(task: Any) -> dict[str, Any]:
    directory = task.task_directory
    before = sorted(p.name for p in directory.iterdir())
    (directory / f"run-{task.stamp}.txt").write_text("data")
    again = sorted(p.name for p in task.task_directory.iterdir())  # a second look keeps it
    return {"dir": str(directory), "before": before, "again": again, "stamp": task.stamp}


class AsyncDir(Task):
    stamp: Requires[int]

    def build_task(self, tag: str) -> None:
        self.stamp = Stamp(tag)

    async def run_task(self) -> dict[str, Any]:
        return _use_directory(self)


class SyncDir(Task):
    stamp: Requires[int]

    def build_task(self, tag: str) -> None:
        self.stamp = Stamp(tag)

    def run_task(self) -> dict[str, Any]:
        return _use_directory(self)


# Classes without a build_task take no arguments.


class NoBuild(Task):
    async def run_task(self) -> int:
        return 1


class MisspelledBuild(Task):
    def build(self, x: int) -> None:
        self.x = x

    async def run_task(self) -> int:
        return self.x


class TypoBuild(NoBuild):
    """The look-alike is found in a base class too, and through a typo."""

    def biuld_task(self, x: int, *, scale: int = 1) -> None:
        self.x = x * scale


class Gathers(SinkTask[[]]):
    pass


class InheritsBuild(Noted):
    pass


# Clearing.


class Base(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        return self.i


class Mid(Task):
    b: Requires[int]

    def build_task(self, i: int) -> None:
        self.b = Base(i)

    async def run_task(self) -> int:
        return self.b * 10


class Top(Task):
    mids: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.mids = [Mid(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.mids)


# Bodies.


async def test_async_body_runs_on_the_event_loop(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await AsyncThread().run(cache_dir=cache_dir) == threading.get_ident()


async def test_sync_body_runs_off_the_event_loop(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        ident = await SyncThread().run(cache_dir=cache_dir)
    assert isinstance(ident, int)
    assert ident != threading.get_ident()


async def test_sync_body_reads_requirements(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await SyncAdd(3).run(cache_dir=cache_dir) == 6 + 3 + 1


async def test_source_task(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await Seven().run(cache_dir=cache_dir) == 7
        assert await SyncSource().run(cache_dir=cache_dir) == "source"
    assert Seven() == Seven()


def test_source_task_takes_no_arguments() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"Seven"):
        Seven(1)  # type: ignore[call-arg]


async def test_sink_task_gathers_requirements(cache_dir: Path) -> None:
    prefix = str(cache_dir)
    with anyio.fail_after(30):
        value, stats = await Sink(prefix).run_with_stats(cache_dir=cache_dir)
    assert value is None
    assert runs(stats, Noted) == (5, 0)
    assert runs(stats, Sink) == (1, 0)
    assert sorted(s for s in SINK_SEEN if s.startswith(prefix)) == sorted(
        f"{prefix}-{s}" for s in ("one", "m0", "m1", "m2", "x")
    )


@pytest.mark.parametrize(
    ("make", "label"),
    [
        (lambda: NoBuild(5), "NoBuild(5)"),
        (lambda: NoBuild(x=[1]), "NoBuild(x=[1])"),
        (lambda: Gathers("a"), "Gathers('a')"),
    ],
)
def test_arguments_without_build_task_are_refused(make: Callable[[], object], label: str) -> None:
    cls = label.partition("(")[0]
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        make()
    assert str(info.value) == (
        f"{label}: class {cls} defines no build_task, so it takes no arguments; "
        "define build_task(self, ...) to take them"
    )


@pytest.mark.parametrize(
    ("make", "method"),
    [
        (lambda: MisspelledBuild(5), "build(self, x)"),
        (lambda: TypoBuild(5, scale=2), "biuld_task(self, x, *, scale=1)"),
    ],
)
def test_a_look_alike_of_build_task_is_named(make: Callable[[], object], method: str) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        make()
    assert "defines no build_task, so it takes no arguments" in str(info.value)
    assert str(info.value).endswith(f"; is its method {method} a misspelled build_task? Rename it build_task")


async def test_no_build_task_and_no_arguments_still_runs(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await NoBuild().run(cache_dir=cache_dir) == 1
        assert await Gathers().run(cache_dir=cache_dir) is None
        assert await InheritsBuild("t").run(cache_dir=cache_dir) == "t"  # its base's build_task counts
    # The key is what it always was.
    assert NoBuild().__af_key__ == f"{NoBuild.task_name}()"


# Names.


def test_task_name_is_module_and_qualname() -> None:
    assert Num.task_name == f"{__name__}.Num"
    assert Num.task_name == f"{Num.__module__}.{Num.__qualname__}"
    assert Outer.Inner.task_name == f"{__name__}.Outer.Inner"
    assert Seven.task_name == f"{__name__}.Seven"
    # A subclass gets its own name, not its parent's.
    assert ListOf.task_name != Task.task_name


async def test_stats_are_keyed_by_task_name(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        value, stats = await Outer.Inner().run_with_stats(cache_dir=cache_dir)
    assert value == "inner"
    assert set(stats) == {f"{__name__}.Outer.Inner"}


def test_repr_is_the_call() -> None:
    assert repr(Num(3)) == "Num(3)"
    assert repr(Outer.Inner()) == "Outer.Inner()"
    assert repr(ListOf(2, as_tuple=True)) == "ListOf(2, True)"


# infer_task_type.


def test_infer_task_type_returns_the_class() -> None:
    assert infer_task_type(Num) is Num
    assert isinstance(Typed, type)
    assert issubclass(Typed, Task)
    assert Typed.task_name == f"{__name__}.Typed"


async def test_infer_task_type_decorated_class_runs(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await Typed(1).run(cache_dir=cache_dir) == 2


_NOT_A_CLASS: tuple[pytest.MarkDecorator, ...] = ()


@pytest.mark.parametrize(
    "thing",
    [
        pytest.param(int, id="class"),
        pytest.param(Num(1), id="instance", marks=_NOT_A_CLASS),
        pytest.param("Num", id="string", marks=_NOT_A_CLASS),
    ],
)
def test_infer_task_type_refuses_non_tasks(thing: Any) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError):
        infer_task_type(thing)


# Class definitions.


def test_class_defining_init_is_refused() -> None:
    def body(ns: dict[str, Any]) -> None:
        ns["__init__"] = lambda self, n: None

    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        types.new_class("HasInit", (Task,), {}, body)
    message = str(info.value)
    assert "HasInit" in message
    assert "__init__" in message
    assert "build_task" in message


# Dedupe.


async def test_same_node_is_built_once(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30):
        value, stats = await Diamond(tag).run_with_stats(cache_dir=cache_dir)
    assert value == (11, 101, [1, 1])
    assert BUILDS[tag] == 1
    assert runs(stats, Shared) == (1, 0)
    assert runs(stats, Left) == (1, 0)
    assert runs(stats, Right) == (1, 0)


# task_directory.


@pytest.mark.parametrize("cls", [AsyncDir, SyncDir])
async def test_task_directory_lifecycle(cache_dir: Path, cls: type[Task[Any, Any]]) -> None:
    with anyio.fail_after(30):
        first = await cls("a").run(cache_dir=cache_dir)
        directory = anyio.Path(first["dir"])
        assert first["dir"].startswith(str(cache_dir))
        assert first["before"] == []
        assert first["again"] == [f"run-{first['stamp']}.txt"]
        # Kept after the run.
        assert await (directory / f"run-{first['stamp']}.txt").exists()

        # Another node of the class has a directory of its own.
        other = await cls("b").run(cache_dir=cache_dir)
        assert other["dir"] != first["dir"]

        # Re-running the node (its upstream changed) starts from an empty directory.
        assert await Stamp("a").clear(cache_dir=cache_dir)
        second, stats = await cls("a").run_with_stats(cache_dir=cache_dir)
        assert runs(stats, cls) == (1, 0)
        assert second["dir"] == first["dir"]
        assert second["stamp"] != first["stamp"]
        assert second["before"] == []
        assert second["again"] == [f"run-{second['stamp']}.txt"]

        # Reused from the cache: the directory is left as it is.
        third, stats = await cls("a").run_with_stats(cache_dir=cache_dir)
        assert runs(stats, cls) == (0, 1)
        assert third == second
        assert await (directory / f"run-{second['stamp']}.txt").exists()

        # clear() removes it; clear_all() removes every one of the class.
        assert await cls("a").clear(cache_dir=cache_dir)
        assert not await directory.exists()
        assert await anyio.Path(other["dir"]).exists()
        assert await cls.clear_all(cache_dir=cache_dir) == 1
        assert not await anyio.Path(other["dir"]).exists()


# Clearing and staleness.


async def test_clear_makes_dependents_stale(cache_dir: Path) -> None:
    with anyio.fail_after(60):
        value, stats = await Top(3).run_with_stats(cache_dir=cache_dir)
        assert value == 30
        assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((3, 0), (3, 0), (1, 0))

        _, stats = await Top(3).run_with_stats(cache_dir=cache_dir)
        assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((0, 3), (0, 3), (0, 1))

        assert await Base(1).clear(cache_dir=cache_dir) is True
        assert await Base(1).clear(cache_dir=cache_dir) is False  # nothing left to remove
        with pytest.raises(asyncflow.CacheError):
            await Base(1).result(cache_dir=cache_dir)
        value, stats = await Top(3).run_with_stats(cache_dir=cache_dir)
        assert value == 30
        # The cleared node and everything downstream of it re-run; its siblings do not.
        assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((1, 2), (1, 2), (1, 0))

        # Clearing a middle node leaves its upstream alone.
        assert await Mid(2).clear(cache_dir=cache_dir)
        _, stats = await Top(3).run_with_stats(cache_dir=cache_dir)
        assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((0, 3), (1, 2), (1, 0))


async def test_clear_all_makes_dependents_stale(cache_dir: Path) -> None:
    with anyio.fail_after(60):
        await Top(3).run(cache_dir=cache_dir)
        assert await Mid.clear_all(cache_dir=cache_dir) == 3
        # Only that class is cleared.
        assert await Base(0).result(cache_dir=cache_dir) == 0
        with pytest.raises(asyncflow.CacheError):
            await Mid(0).result(cache_dir=cache_dir)

        value, stats = await Top(3).run_with_stats(cache_dir=cache_dir)
        assert value == 30
        assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((0, 3), (3, 0), (1, 0))

        assert await Base.clear_all(cache_dir=cache_dir) == 3
        assert await Base.clear_all(cache_dir=cache_dir) == 0
        _, stats = await Top(3).run_with_stats(cache_dir=cache_dir)
        assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((3, 0), (3, 0), (1, 0))


async def test_clear_on_an_empty_cache(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await Base(1).clear(cache_dir=cache_dir) is False
        assert await Base.clear_all(cache_dir=cache_dir) == 0


# result().


async def test_result_of_uncached_task_raises_cache_error(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        # No cache at all yet.
        with pytest.raises(asyncflow.CacheError) as info:
            await Num(1).result(cache_dir=cache_dir)
        assert "Num(1)" in str(info.value)
        # A cache that holds other nodes.
        assert await Num(2).run(cache_dir=cache_dir) == 4
        assert await Num(2).result(cache_dir=cache_dir) == 4
        with pytest.raises(asyncflow.CacheError, match=r"Num\(1\)"):
            await Num(1).result(cache_dir=cache_dir)


async def test_result_does_not_run_anything(cache_dir: Path) -> None:
    with anyio.fail_after(30), pytest.raises(asyncflow.CacheError):
        await Num(5).result(cache_dir=cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.CacheError):
        await Num(5).result(cache_dir=cache_dir)


# Sync twins.


def test_sync_twins_from_plain_code(cache_dir: Path) -> None:
    assert Top(2).run_graph(cache_dir=cache_dir) == 10
    value, stats = Top(2).run_graph_with_stats(cache_dir=cache_dir)
    assert value == 10
    assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((0, 2), (0, 2), (0, 1))
    assert Mid(1).get_task_result(cache_dir=cache_dir) == 10

    assert Base(1).clear_task(cache_dir=cache_dir) is True
    assert Base(1).clear_task(cache_dir=cache_dir) is False
    with pytest.raises(asyncflow.CacheError):
        Base(1).get_task_result(cache_dir=cache_dir)
    _, stats = Top(2).run_graph_with_stats(cache_dir=cache_dir)
    assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((1, 1), (1, 1), (1, 0))

    assert Mid.clear_all_tasks(cache_dir=cache_dir) == 2
    with pytest.raises(asyncflow.CacheError):
        Mid(0).get_task_result(cache_dir=cache_dir)
    _, stats = Top(2).run_graph_with_stats(cache_dir=cache_dir)
    assert (runs(stats, Base), runs(stats, Mid), runs(stats, Top)) == ((0, 2), (2, 0), (1, 0))


def test_sync_twins_run_twice_in_one_thread(cache_dir: Path) -> None:
    # Each call starts and closes its own loop.
    assert Num(1).run_graph(cache_dir=cache_dir) == 2
    assert Num(2).run_graph(cache_dir=cache_dir) == 4


def test_sync_twin_runs_outside_a_loop(cache_dir: Path) -> None:
    assert Total(3).run_graph(cache_dir=cache_dir) == 3


async def test_sync_twin_refuses_inside_a_loop(cache_dir: Path) -> None:
    with pytest.raises(asyncflow.EventLoopRunningError, match=r"await task\.run\(\)"):
        Total(3).run_graph(cache_dir=cache_dir)


TWINS: dict[str, Callable[[Path], object]] = {
    "run_graph": lambda d: Num(1).run_graph(cache_dir=d),
    "run_graph_with_stats": lambda d: Num(1).run_graph_with_stats(cache_dir=d),
    "get_task_result": lambda d: Num(1).get_task_result(cache_dir=d),
    "clear_task": lambda d: Num(1).clear_task(cache_dir=d),
    "clear_all_tasks": lambda d: Num.clear_all_tasks(cache_dir=d),
}


@pytest.mark.parametrize("twin", sorted(TWINS))
async def test_sync_twin_refuses_inside_event_loop(cache_dir: Path, twin: str) -> None:
    with pytest.raises(asyncflow.EventLoopRunningError) as info:
        TWINS[twin](cache_dir)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "await" in message
    assert twin in message
    assert not await anyio.Path(cache_dir).exists()  # refused before touching anything


@pytest.mark.parametrize("twin", sorted(TWINS))
async def test_sync_twin_works_from_a_worker_thread(cache_dir: Path, twin: str) -> None:
    # A thread started by the loop runs no loop itself: the twin may start one there.
    with anyio.fail_after(30):
        await Num(1).run(cache_dir=cache_dir)
        await anyio.to_thread.run_sync(TWINS[twin], cache_dir)


TWIN_PAIRS = [
    ("run_graph", "run"),
    ("run_graph_with_stats", "run_with_stats"),
    ("clear_task", "clear"),
    ("clear_all_tasks", "clear_all"),
    ("get_task_result", "result"),
]


@pytest.mark.parametrize(("twin", "sibling"), TWIN_PAIRS)
@pytest.mark.parametrize("owner", [Task, Num], ids=["Task", "subclass"])
def test_sync_twin_signature_matches_async_sibling(
    owner: type[Task[Any, Any]], twin: str, sibling: str
) -> None:
    sync_fn = getattr(owner, twin)
    async_fn = getattr(owner, sibling)
    assert inspect.signature(sync_fn).parameters == inspect.signature(async_fn).parameters
    assert not inspect.iscoroutinefunction(sync_fn)
    assert inspect.iscoroutinefunction(async_fn)
    # A classmethod twin for a classmethod sibling, an instance method for an instance one.
    assert isinstance(inspect.getattr_static(Task, twin), classmethod) == isinstance(
        inspect.getattr_static(Task, sibling), classmethod
    )


async def test_a_task_state_keeps_its_keys_from_the_start(cache_dir: Path) -> None:
    # Every key an attempt sets exists from the start: CPython then keeps a task's state
    # compact, its keys shared with its class (see `Task.__init__`).
    from asyncflow._requires import _VALUES  # pyright: ignore[reportPrivateUsage]  # the name it must match

    task = ListOf(3)
    before = list(vars(task))
    assert _VALUES in before
    await task.run(cache_dir=cache_dir)
    assert list(vars(task))[: len(before)] == before
