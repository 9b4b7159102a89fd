"""Requirements: Requires/RequiresList/RequiresDict, annotation spellings, Req(), Const, items."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import asyncflow
from asyncflow import Const, Req, Requires, RequiresDict, RequiresList, Task

from .test_task import ListOf, Num, Record
from .workflows import runs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


# Task classes (module level: runners in other processes import them).


class AnnotatedOnly(Task):
    a: Requires[int]
    b: Requires[int]

    def build_task(self, x: int) -> None:
        self.a = Const(x)
        self.b = Num(x)

    async def run_task(self) -> int:
        return self.a + self.b


class ReqOnly(Task):
    a = Req()
    b: Requires[int] = Req()

    def build_task(self, x: int) -> None:
        self.a = Num(x)
        self.b = Const(100)

    async def run_task(self) -> int:
        return self.a + self.b  # pyright: ignore[reportOperatorIssue]  # `a = Req()` is untyped


class ReqCollections(Task):
    """`= Req()` with a list or dict annotation gives a list or dict requirement."""

    xs: RequiresList[int] = Req()
    d: RequiresDict[str, int] = Req()

    def build_task(self, n: int) -> None:
        self.xs = [Num(i) for i in range(n)]
        self.d = {"n": Num(n)}

    async def run_task(self) -> tuple[list[int], dict[str, int]]:
        return self.xs, self.d


class QualifiedAnnotation(Task):
    a: asyncflow.Requires[int]

    def build_task(self, x: int) -> None:
        self.a = Num(x)

    async def run_task(self) -> int:
        return self.a


class RuntimeAnnotation(Task):
    # What a module without `from __future__ import annotations` gets: a real type.
    __annotations__ = {"a": Requires[int]}

    def build_task(self, x: int) -> None:
        self.a = Num(x)

    async def run_task(self) -> int:
        return self.a  # pyright: ignore[reportReturnType]  # pyright cannot see this annotation


class PlainAnnotation(Task):
    """An annotation that is not a requirement leaves the attribute alone."""

    label: str
    a: Requires[int]

    def build_task(self, label: str) -> None:
        self.label = label
        self.a = Num(1)

    async def run_task(self) -> str:
        return f"{self.label}:{self.a}"


class DictOf(Task):
    d: RequiresDict[Any, int]

    def build_task(self) -> None:
        self.d = {"num": Num(3), "const": Const(7), 5: Num(5), "item": Record(2)["k"]}

    async def run_task(self) -> tuple[str, dict[Any, int]]:
        return type(self.d).__name__, self.d


class EmptyList(Task):
    xs: RequiresList[int]
    d: RequiresDict[str, int]

    def build_task(self) -> None:
        self.xs = []
        self.d = {}

    async def run_task(self) -> tuple[list[int], dict[str, int]]:
        return self.xs, self.d


class ConstValues(Task):
    plain: Requires[int]
    unkeyable: Requires[set[int]]
    none: Requires[None]

    def build_task(self) -> None:
        self.plain = Const(3)
        self.unkeyable = Const({1, 2})  # a Const need not be a valid argument
        self.none = Const(None)

    async def run_task(self) -> tuple[int, set[int], None]:
        return self.plain, self.unkeyable, self.none


class Pair(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> tuple[int, int]:
        return self.n, -self.n


class Items(Task):
    k: Requires[int]
    first: Requires[int]
    deep: Requires[int]
    negative: Requires[int]
    many: RequiresList[int]
    named: RequiresDict[str, int]

    def build_task(self, n: int) -> None:
        record = Record(n)
        self.k = record["k"]
        self.first = record["list"][0]
        self.deep = record["a"]["b"]["c"]
        self.negative = Pair(n)[1]
        self.many = [record["list"][1], Pair(n)[0], Const(0)]
        self.named = {"whole": record["a"]["b"], "k": Record(n)["k"]}

    async def run_task(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "first": self.first,
            "deep": self.deep,
            "negative": self.negative,
            "many": self.many,
            "named": self.named,
        }


class MissingItem(Task):
    """Reads an item its upstream's result does not have."""

    x: Requires[int]

    def build_task(self, n: int) -> None:
        self.x = Record(n)["nope"]

    async def run_task(self) -> int:
        return self.x


class BadAssignment(Task):
    a: Requires[int]

    def build_task(self) -> None:
        self.a = 5  # type: ignore[assignment]  # a ready value must be wrapped in Const

    async def run_task(self) -> int:
        return self.a


class Listing(Task):
    async def run_task(self) -> dict[str, list[str]]:
        return {"files": ["a", "b"]}


class Process(Task):
    def build_task(self, name: str) -> None:
        self.name = name

    async def run_task(self) -> str:
        return self.name.upper()


class FanOutInBuild(Task):
    """The mistake: iterating an upstream result in build_task, where it does not exist yet."""

    files: Requires[list[str]]
    done: RequiresList[str]

    def build_task(self) -> None:
        self.files = Listing()["files"]
        self.done = [Process(f) for f in self.files]

    async def run_task(self) -> list[str]:
        return self.done


class FanOut(Task):
    """The fix: the items are arguments, from a run of the upstream task."""

    done: RequiresList[str]

    def build_task(self, files: list[str]) -> None:
        self.done = [Process(f) for f in files]

    async def run_task(self) -> list[str]:
        return self.done


# Requirements.


async def test_requirement_by_annotation_alone(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        value, stats = await AnnotatedOnly(5).run_with_stats(cache_dir=cache_dir)
    assert value == 5 + 10
    assert runs(stats, Num) == (1, 0)


async def test_requirement_by_req(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        value, stats = await ReqOnly(4).run_with_stats(cache_dir=cache_dir)
    assert value == 8 + 100
    assert runs(stats, Num) == (1, 0)


async def test_req_with_collection_annotations(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        value, stats = await ReqCollections(3).run_with_stats(cache_dir=cache_dir)
    assert value == ([0, 2, 4], {"n": 6})
    assert runs(stats, Num) == (4, 0)


@pytest.mark.parametrize("cls", [QualifiedAnnotation, RuntimeAnnotation])
async def test_requirement_annotation_spellings(cache_dir: Path, cls: type[Task[Any, Any]]) -> None:
    with anyio.fail_after(30):
        assert await cls(21).run(cache_dir=cache_dir) == 42


async def test_plain_annotation_is_not_a_requirement(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await PlainAnnotation("hi").run(cache_dir=cache_dir) == "hi:2"


async def test_requires_list_reads_as_list(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await ListOf(3).run(cache_dir=cache_dir) == ("list", [0, 2, 4, -1])
        # Assigned as a tuple, it still reads as a list.
        assert await ListOf(2, as_tuple=True).run(cache_dir=cache_dir) == ("list", [0, 2, -1])


async def test_requires_dict_reads_as_dict(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        kind, value = await DictOf().run(cache_dir=cache_dir)
    assert kind == "dict"
    assert value == {"num": 6, "const": 7, 5: 10, "item": 2}


async def test_empty_list_and_dict_requirements(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await EmptyList().run(cache_dir=cache_dir) == ([], {})


async def test_const_values(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await ConstValues().run(cache_dir=cache_dir) == (3, {1, 2}, None)


async def test_item_access(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        value, stats = await Items(4).run_with_stats(cache_dir=cache_dir)
    assert value == {
        "k": 4,
        "first": 4,
        "deep": 40,
        "negative": -4,
        "many": [5, 4, 0],
        "named": {"whole": {"c": 40}, "k": 4},
    }
    # Items are read from their task's one result: no extra nodes.
    assert runs(stats, Record) == (1, 0)
    assert runs(stats, Pair) == (1, 0)


async def test_missing_item_fails_the_reading_task(cache_dir: Path) -> None:
    with anyio.fail_after(30), pytest.raises(asyncflow.TaskFailedError) as info:
        await MissingItem(1).run(cache_dir=cache_dir)
    assert info.value.task == "MissingItem(1)"
    assert "nope" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_item_reference_repr_and_key() -> None:
    item = Record(1)["a"]["b"]
    assert repr(item) == "Record(1)['a']['b']"
    assert isinstance(item, asyncflow.TaskItem)
    assert item.__af_key__ != Record(1)["a"].__af_key__


def test_item_key_must_be_keyable() -> None:
    with pytest.raises(TypeError, match=r"Record\(1\)"):
        Record(1)[1j]
    with pytest.raises(
        asyncflow.TaskDefinitionError, match=r"Record\(1\)\[\[1\]\]: an item key must be hashable"
    ):
        Record(1)[[1]]  # has a cache key, but no result can be indexed by a list


async def test_unwrapped_value_as_requirement_is_refused(cache_dir: Path) -> None:
    with anyio.fail_after(30), pytest.raises(asyncflow.BuildError) as info:
        await BadAssignment().run(cache_dir=cache_dir)
    assert "BadAssignment()" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)
    assert "Const" in str(info.value.__cause__)


def test_requirement_with_a_non_req_default_is_refused() -> None:
    def body(ns: dict[str, Any]) -> None:
        ns["__annotations__"] = {"a": "Requires[int]"}
        ns["a"] = 5

    with pytest.raises(asyncflow.TaskDefinitionError, match=r"BadDefault\.a"):
        types.new_class("BadDefault", (Task,), {}, body)


# Iterating a task-like is refused at once (it used to loop forever, growing memory).


@pytest.fixture
def endless_iteration_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Python's fallback iteration through __getitem__ fail fast instead of eating memory.

    Without `__iter__`, `for x in task` calls task[0], task[1], ... forever: a regression
    must fail the test at once, not hang it or exhaust the machine's memory.
    """

    def guarded(original: Any) -> Any:
        def getitem(self: Any, key: Any) -> Any:
            if isinstance(key, int) and key >= 100:
                raise AssertionError(f"{self!r} is being iterated through __getitem__ ({key})")
            return original(self, key)

        return getitem

    monkeypatch.setattr(asyncflow.TaskItem, "__getitem__", guarded(asyncflow.TaskItem.__getitem__))
    monkeypatch.setattr(Task, "__getitem__", guarded(Task.__getitem__))
    monkeypatch.setattr(Const, "__getitem__", guarded(Const.__getitem__))


ITERATIONS: dict[str, Callable[[Any], object]] = {
    "for": lambda t: [x for x in t],  # noqa: C416 - the spelling under test
    "list": list,
    "in": lambda t: "a" in t,
    "unpacking": lambda t: (*t,),
    "assignment": lambda t: [a for a, _ in [t]],
}


@pytest.mark.usefixtures("endless_iteration_fails")
@pytest.mark.parametrize("iterate", ITERATIONS.values(), ids=list(ITERATIONS))
def test_iterating_a_task_is_refused(iterate: Callable[[Any], object]) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        iterate(Listing())
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert message.startswith("Listing() is a task, not its result, so it cannot be iterated: ")
    assert "a requirement's value exists only in run_task" in message
    assert "items = await Listing().run(); [YourTask(x) for x in items]" in message


@pytest.mark.usefixtures("endless_iteration_fails")
@pytest.mark.parametrize("iterate", ITERATIONS.values(), ids=list(ITERATIONS))
def test_iterating_a_task_item_is_refused(iterate: Callable[[Any], object]) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        iterate(Listing()["files"])
    message = str(info.value)
    assert message.startswith("Listing()['files'] stands for an item of Listing()'s result, so it")
    assert "items = (await Listing().run())['files']" in message


@pytest.mark.usefixtures("endless_iteration_fails")
@pytest.mark.parametrize("iterate", ITERATIONS.values(), ids=list(ITERATIONS))
def test_iterating_a_const_points_at_its_value(iterate: Callable[[Any], object]) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"iterate Const\(\['a', 'b'\]\)\.value$"):
        iterate(Const(["a", "b"]))
    with pytest.raises(
        asyncflow.TaskDefinitionError, match=r"iterate Const\(\{'k': \[1\]\}\)\.value\['k'\]$"
    ):
        iterate(Const({"k": [1]})["k"])


@pytest.mark.usefixtures("endless_iteration_fails")
async def test_iterating_a_requirement_in_build_task_fails_the_build(cache_dir: Path) -> None:
    with anyio.fail_after(30), pytest.raises(asyncflow.BuildError) as info:
        await FanOutInBuild().run(cache_dir=cache_dir)
    assert str(info.value).startswith(
        "FanOutInBuild(): build_task raised TaskDefinitionError: Listing()['files']"
    )
    assert isinstance(info.value.__cause__, asyncflow.TaskDefinitionError)


async def test_fan_out_over_a_result_run_first(cache_dir: Path) -> None:
    # What the message says to write instead.
    with anyio.fail_after(30):
        files = (await Listing().run(cache_dir=cache_dir))["files"]
        assert await FanOut(files).run(cache_dir=cache_dir) == ["A", "B"]
