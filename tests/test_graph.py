"""Expanding a root into a graph: depth, breadth, unset requirements, cycles, failing builds."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import asyncflow
from asyncflow import Const, Req, Requires, RequiresDict, RequiresList, SinkTask, Task
from asyncflow._requires import requirements_of

if TYPE_CHECKING:
    from pathlib import Path


# Big graphs.


class Link(Task):
    """Link(n) requires Link(n - 1): a chain n + 1 nodes deep."""

    prev: Requires[int]

    def build_task(self, n: int) -> None:
        self.prev = Link(n - 1) if n > 0 else Const(0)

    async def run_task(self) -> int:
        return self.prev + 1


class Leaf(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        return self.i


class Wide(Task):
    leaves: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.leaves = [Leaf(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.leaves)


def _run_stats(stats: asyncflow.RunStats, cls: type[Task[Any, Any]]) -> tuple[int, int]:
    s = stats[cls.task_name]
    return s.run, s.reused


async def test_chain_10000_deep(cache_dir: Path) -> None:
    depth = 10_000
    assert depth > 5 * sys.getrecursionlimit()  # recursion per node would fail here
    with anyio.fail_after(300):
        value, stats = await Link(depth).run_with_stats(cache_dir=cache_dir)
        assert value == depth + 1
        assert _run_stats(stats, Link) == (depth + 1, 0)
        # Settling a chain of fresh nodes must not recurse either.
        value, stats = await Link(depth).run_with_stats(cache_dir=cache_dir)
    assert value == depth + 1
    assert _run_stats(stats, Link) == (0, depth + 1)


async def test_chain_rerun_from_the_bottom(cache_dir: Path) -> None:
    depth = 10_000
    with anyio.fail_after(300):
        await Link(depth).run(cache_dir=cache_dir)
        assert await Link(0).clear(cache_dir=cache_dir)
        value, stats = await Link(depth).run_with_stats(cache_dir=cache_dir)
    assert value == depth + 1
    assert _run_stats(stats, Link) == (depth + 1, 0)


@pytest.mark.slow
async def test_fan_out_100000_leaves(cache_dir: Path) -> None:
    n = 100_000
    with anyio.fail_after(600):
        value, stats = await Wide(n).run_with_stats(cache_dir=cache_dir)
        assert value == n * (n - 1) // 2
        assert _run_stats(stats, Leaf) == (n, 0)
        assert _run_stats(stats, Wide) == (1, 0)
        value, stats = await Wide(n).run_with_stats(cache_dir=cache_dir)
    assert value == n * (n - 1) // 2
    assert _run_stats(stats, Leaf) == (0, n)
    assert _run_stats(stats, Wide) == (0, 1)


# Nothing runs before the graph is whole: a module-level record of bodies that ran.

RAN: list[str] = []


class Marker(Task):
    """Record that its body ran."""

    def build_task(self, tag: str) -> None:
        self.tag = tag

    async def run_task(self) -> str:
        RAN.append(self.tag)
        return self.tag


def ran(tag: str) -> list[str]:
    return [t for t in RAN if t == tag]


# Unset requirements.


class Forgetful(Task):
    done: Requires[str]
    forgotten: Requires[str] = Req()

    def build_task(self, tag: str) -> None:
        self.done = Marker(tag)


class ForgetsList(Task):
    items: RequiresList[str]
    named: RequiresDict[str, str]

    def build_task(self, tag: str) -> None:
        self.items = [Marker(tag)]


class Parent(Task):
    inherited: Requires[str]


class Child(Parent):
    own: Requires[str]

    def build_task(self, tag: str) -> None:
        self.own = Marker(tag)


class Root(Task):
    """A healthy branch beside a broken one: neither may run."""

    healthy: Requires[str]
    broken: Requires[Any]

    def build_task(self, tag: str, broken: str) -> None:
        self.healthy = Marker(tag)
        self.broken = BROKEN[broken](tag)

    async def run_task(self) -> str:
        return "root"


@pytest.mark.parametrize(
    ("cls", "attribute"),
    [(Forgetful, "forgotten"), (ForgetsList, "named"), (Child, "inherited")],
)
async def test_unset_requirement(cache_dir: Path, cls: type[Task[Any, Any]], attribute: str) -> None:
    tag = str(cache_dir)
    task = cls(tag)
    with anyio.fail_after(30), pytest.raises(asyncflow.MissingRequirementError) as info:
        await task.run(cache_dir=cache_dir)
    error = info.value
    assert isinstance(error, asyncflow.GraphError)
    assert error.task == repr(task)
    assert error.attribute == attribute
    message = str(error)
    assert repr(task) in message
    assert repr(attribute) in message or f".{attribute}" in message
    assert ran(tag) == []  # nothing ran


async def test_unset_requirement_deep_in_the_graph(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.MissingRequirementError) as info:
        await Root(tag, "forgetful").run(cache_dir=cache_dir)
    assert info.value.task == repr(Forgetful(tag))
    assert info.value.attribute == "forgotten"
    assert ran(tag) == []


def test_unset_requirement_from_the_sync_twin(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with pytest.raises(asyncflow.MissingRequirementError, match=r"Forgetful\("):
        Forgetful(tag).run_graph(cache_dir=cache_dir)
    assert ran(tag) == []


# Tasks in attributes that are not declared requirements.

HELD: dict[str, Any] = {
    "task": lambda: Marker("held"),
    "item": lambda: Marker("held")["x"],
    "const": lambda: Const(1),
    "list": lambda: [1, Marker("held")],
    "tuple": lambda: (Marker("held"),),
    "set": lambda: {Marker("held")},
    "dict": lambda: {"a": 1, "b": Marker("held")},
}


class Undeclared(Task):
    """Keeps a task-like (or a container of them) in an attribute it did not declare."""

    done: Requires[str]

    def build_task(self, tag: str, how: str) -> None:
        self.done = Marker(tag)
        self.label = tag  # plain values and containers of them are fine
        self.sizes = {"a": [1, 2]}
        self.data = HELD[how]()

    async def run_task(self) -> str:
        return self.done


class AboveUndeclared(SinkTask[[str, str]]):
    below: Requires[str]

    def build_task(self, tag: str, how: str) -> None:
        self.below = Undeclared(tag, how)


class Passes(Task):
    """Takes a task as an argument and declares it: the arguments are not attributes."""

    up: Requires[str]

    def build_task(self, up: Task[Any, str]) -> None:
        self.up = up

    async def run_task(self) -> str:
        return self.up


@pytest.mark.parametrize(
    ("how", "held", "declaration"),
    [
        ("task", "Marker('held')", "data: Requires[...]"),
        ("item", "Marker('held')['x']", "data: Requires[...]"),
        ("const", "Const(1)", "data: Requires[...]"),
        ("list", "a list containing Marker('held')", "data: RequiresList[...]"),
        ("tuple", "a tuple containing Marker('held')", "data: RequiresList[...]"),
        ("set", "a set containing Marker('held')", "data: RequiresList[...], assigned a list"),
        ("dict", "a dict containing Marker('held')", "data: RequiresDict[...]"),
    ],
)
async def test_undeclared_attribute_holding_tasks(
    cache_dir: Path, how: str, held: str, declaration: str
) -> None:
    task = Undeclared("t", how)
    with anyio.fail_after(30), pytest.raises(asyncflow.UndeclaredRequirementError) as info:
        await task.run(cache_dir=cache_dir)
    error = info.value
    assert isinstance(error, asyncflow.GraphError)
    assert error.task == "Undeclared('t', " + repr(how) + ")"
    assert error.attribute == "data"
    assert str(error) == (
        f"{error.task}: attribute 'data' holds {held} but is not a declared requirement, so run_task "
        f"would read it as it is, not the result it stands for; declare it: {declaration}"
    )


class UndeclaredOtherwise(Task):
    """Keeps tasks undeclared in ways the check must see through: its instance dict already
    made (CPython keeps attributes in a compact array until something asks for the dict),
    or a requirement's own list kept again under another name."""

    done: RequiresList[str]

    def build_task(self, tag: str, how: str) -> None:
        self.done = [Marker(tag)]
        if how == "dict made":
            vars(self)  # the check then finds the values in a dict, not the compact array
            self.data = [Marker("held")]
        elif how == "requirement kept again":
            self.data = self.done
        else:  # "tuple"
            self.data = (Marker("held"),)

    async def run_task(self) -> list[str]:
        return self.done


@pytest.mark.parametrize(
    ("how", "held"),
    [
        ("dict made", "a list containing Marker('held')"),
        ("requirement kept again", f"a list containing Marker({'t'!r})"),
        ("tuple", "a tuple containing Marker('held')"),
    ],
)
async def test_undeclared_attribute_however_kept(cache_dir: Path, how: str, held: str) -> None:
    task = UndeclaredOtherwise("t", how)
    with anyio.fail_after(30), pytest.raises(asyncflow.UndeclaredRequirementError) as info:
        await task.run(cache_dir=cache_dir)
    assert info.value.attribute == "data"
    assert f"attribute 'data' holds {held} but is not a declared requirement" in str(info.value)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before 3.11 every instance has a dict")
def test_undeclared_check_makes_no_instance_dict() -> None:
    # It runs for every node: it must not turn each task's compact attribute array into a
    # dict of its own (~64 bytes and time per task), nor must reading requirements.
    task = Marker("compact")
    task.__af_build__()
    assert task.__af_undeclared__() is None
    assert requirements_of(task) == {}
    assert not any(type(r) is dict for r in gc.get_referents(task))  # as made: no dict


async def test_undeclared_attribute_deep_in_the_graph(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.UndeclaredRequirementError) as info:
        await AboveUndeclared(tag, "list").run(cache_dir=cache_dir)
    assert info.value.task == repr(Undeclared(tag, "list"))
    assert ran(tag) == []  # refused while the graph is built: nothing ran


async def test_a_task_argument_is_not_an_undeclared_attribute(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30):
        assert await Passes(Marker(tag)).run(cache_dir=cache_dir) == tag


# Cycles.


class Ring(Task):
    """Ring(i, n) requires Ring(i + 1 mod n, n)."""

    nxt: Requires[int]

    def build_task(self, i: int, n: int) -> None:
        self.nxt = Ring((i + 1) % n, n)

    async def run_task(self) -> int:
        return self.nxt


class Ping(Task):
    to_pong: Requires[int]
    side: Requires[str]

    def build_task(self, tag: str) -> None:
        self.side = Marker(tag)
        self.to_pong = Pong(tag)["value"]

    async def run_task(self) -> int:
        return self.to_pong


class Pong(Task):
    to_ping: RequiresList[int]

    def build_task(self, tag: str) -> None:
        self.to_ping = [Const(1), Ping(tag)]

    async def run_task(self) -> dict[str, int]:
        return {"value": sum(self.to_ping)}


class AboveRing(Task):
    healthy: Requires[str]
    ring: Requires[int]

    def build_task(self, tag: str) -> None:
        self.healthy = Marker(tag)
        self.ring = Ring(0, 2)

    async def run_task(self) -> int:
        return self.ring


@pytest.mark.parametrize("n", [1, 2, 3, 50])
async def test_cycle(cache_dir: Path, n: int) -> None:
    with anyio.fail_after(30), pytest.raises(asyncflow.CycleError) as info:
        await Ring(0, n).run(cache_dir=cache_dir)
    error = info.value
    assert isinstance(error, asyncflow.GraphError)
    members = {f"Ring({i}, {n})" for i in range(n)}
    assert set(error.cycle) == members
    assert len(error.cycle) == n
    message = str(error)
    for name in members:
        assert name in message
    assert ".nxt" in message


async def test_cycle_through_items_and_lists_names_both_attributes(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.CycleError) as info:
        await Ping(tag).run(cache_dir=cache_dir)
    error = info.value
    assert set(error.cycle) == {repr(Ping(tag)), repr(Pong(tag))}
    message = str(error)
    assert f"{Ping(tag)!r}.to_pong" in message
    assert f"{Pong(tag)!r}.to_ping" in message
    assert "side" not in message  # not part of the cycle
    assert ran(tag) == []


async def test_cycle_below_the_root_names_only_its_members(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.CycleError) as info:
        await AboveRing(tag).run(cache_dir=cache_dir)
    assert set(info.value.cycle) == {"Ring(0, 2)", "Ring(1, 2)"}
    assert "AboveRing" not in str(info.value)
    assert ran(tag) == []


# Builds that raise.


class Broken(Task):
    def build_task(self, tag: str) -> None:
        raise ValueError(f"cannot build from {tag!r}")

    async def run_task(self) -> None:
        pass


class BadChild(Task):
    """Makes a task with an argument that cannot be keyed, inside build_task."""

    child: Requires[Any]

    def build_task(self, tag: str) -> None:
        self.child = Marker(complex(len(tag)))


BROKEN: dict[str, type[Task[Any, Any]]] = {
    "forgetful": Forgetful,
    "broken": Broken,
    "bad-child": BadChild,
}


async def test_build_error(cache_dir: Path) -> None:
    tag = str(cache_dir)
    task = Broken(tag)
    with anyio.fail_after(30), pytest.raises(asyncflow.BuildError) as info:
        await task.run(cache_dir=cache_dir)
    error = info.value
    assert isinstance(error, asyncflow.GraphError)
    assert error.task == repr(task)
    assert str(error).startswith(repr(task))
    cause = error.__cause__
    assert isinstance(cause, ValueError)
    assert str(cause) == f"cannot build from {tag!r}"
    assert cause.__traceback__ is not None  # the original traceback is kept


@pytest.mark.parametrize(("broken", "cause"), [("broken", ValueError), ("bad-child", TypeError)])
async def test_build_error_deep_in_the_graph(cache_dir: Path, broken: str, cause: type[Exception]) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.BuildError) as info:
        await Root(tag, broken).run(cache_dir=cache_dir)
    assert info.value.task == repr(BROKEN[broken](tag))
    assert isinstance(info.value.__cause__, cause)
    assert ran(tag) == []


async def test_bad_argument_inside_build_is_a_definition_error(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.BuildError) as info:
        await BadChild(tag).run(cache_dir=cache_dir)
    cause = info.value.__cause__
    assert isinstance(cause, asyncflow.TaskDefinitionError)
    assert "Marker" in str(cause)
    assert "complex" in str(cause)


class Gather(SinkTask[[str]]):
    parts: RequiresList[str]

    def build_task(self, tag: str) -> None:
        self.parts = [Marker(f"{tag}-{i}") for i in range(3)] + [Broken(tag)]


async def test_no_sibling_runs_when_a_build_fails(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.BuildError):
        await Gather(tag).run(cache_dir=cache_dir)
    assert [t for t in RAN if t.startswith(tag)] == []
    # The graph error left nothing behind: there is no result to read.
    with pytest.raises(asyncflow.CacheError):
        await Marker(f"{tag}-0").result(cache_dir=cache_dir)
