"""Canonical argument keys: what makes two tasks the same node, and what is refused."""

from __future__ import annotations

import collections
import dataclasses
import decimal
import enum
import math
import os
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta, timezone
from fractions import Fraction
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import pytest

import asyncflow
from asyncflow import Const, RequiresList, SinkTask, Task, _keys

if TYPE_CHECKING:
    from collections.abc import Callable


class Echo(Task):
    """Return its argument as it reached the body."""

    def build_task(self, x: Any) -> None:
        self.x = x

    async def run_task(self) -> Any:
        return self.x


class Gather(SinkTask):
    """Depend on every task in `tasks` (given as a list argument)."""

    deps: RequiresList[Any]

    def build_task(self, tasks: list[Any]) -> None:
        self.deps = tasks


class Collect(Task):
    """Return the results of every task in `tasks`, in order."""

    deps: RequiresList[Any]

    def build_task(self, tasks: list[Any]) -> None:
        self.deps = tasks

    async def run_task(self) -> list[Any]:
        return self.deps


class Choose(Task):
    """Two parameters, no defaults: the fast path of argument binding."""

    def build_task(self, n: int, k: int) -> None:
        self.n, self.k = n, k

    async def run_task(self) -> tuple[int, int]:
        return self.n, self.k


class WithDefaults(Task):
    """Defaults, keyword-only parameters and ``**kwargs``: the slow path of binding."""

    def build_task(self, n: int, k: int = 2, *, scale: float = 1.0, **extra: Any) -> None:
        self.n = n

    async def run_task(self) -> int:
        return self.n


class Thing:
    """Not a JSON-like value: refused as an argument."""


class Colour(enum.Enum):
    RED = 1
    GREEN = "green"
    BLUE = (0, 0, 255)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 4
    W = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: Any
    y: Any = 0


@dataclasses.dataclass(frozen=True)
class OtherPoint:
    x: Any
    y: Any = 0


@dataclasses.dataclass
class Loose:
    """A dataclass that is not frozen: refused, with the fix in the message."""

    x: Any


class Pair(NamedTuple):
    a: Any
    b: Any


OldPair = collections.namedtuple("OldPair", ["a", "b"])  # the classic kind too


class Money:
    """A type of the user's own, made key-able with register_key in the tests."""

    def __init__(self, currency: str, cents: int) -> None:
        self.currency, self.cents = currency, cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (other.currency, other.cents) == (self.currency, self.cents)

    def __hash__(self) -> int:
        return hash((self.currency, self.cents))


class Rich(Task):
    """Return its arguments as they reached the body, to check they run and are reused."""

    def build_task(self, *values: Any, **named: Any) -> None:
        self.values, self.named = values, named

    async def run_task(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self.values, self.named


def echo_key(value: Any) -> str:
    return Echo(value).__af_key__


# Distinct values that JSON (or a naive key) would confuse.


def test_int_float_bool_are_three_nodes() -> None:
    keys = {echo_key(1), echo_key(1.0), echo_key(True)}
    assert len(keys) == 3
    assert Echo(1) != Echo(1.0)
    assert Echo(1) != Echo(True)
    assert Echo(1.0) != Echo(True)


def test_zero_false_none_and_empty_string_are_distinct() -> None:
    assert len({echo_key(0), echo_key(0.0), echo_key(False), echo_key(None), echo_key("")}) == 5


def test_string_that_looks_like_a_number_is_not_the_number() -> None:
    assert echo_key("1") != echo_key(1)
    assert echo_key("1.0") != echo_key(1.0)
    assert echo_key("True") != echo_key(True)
    assert echo_key("None") != echo_key(None)


def test_tuple_and_list_are_two_nodes() -> None:
    assert echo_key((1, 2)) != echo_key([1, 2])
    assert echo_key(()) != echo_key([])
    assert echo_key((1,)) != echo_key([1])
    assert echo_key((1,)) != echo_key(1)
    assert echo_key([[1], (2,)]) != echo_key([(1,), [2]])


def test_dict_key_order_does_not_matter() -> None:
    a = Echo({"x": 1, "y": [1, 2], "z": {"b": 2, "a": 1}})
    b = Echo({"z": {"a": 1, "b": 2}, "y": [1, 2], "x": 1})
    assert a.__af_key__ == b.__af_key__
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_dict_values_still_matter() -> None:
    assert echo_key({"x": 1}) != echo_key({"x": 1.0})
    assert echo_key({"x": 1}) != echo_key({"y": 1})
    assert echo_key({"x": [1]}) != echo_key({"x": (1,)})


def test_dict_is_not_a_list_of_pairs() -> None:
    assert echo_key({"a": 1}) != echo_key([("a", 1)])
    assert echo_key({"a": 1}) != echo_key("{'a': 1}")


def test_strings_with_quotes_and_separators_do_not_collide() -> None:
    # A naive join of reprs or str()s would make some of these equal.
    values = ["a, b", "a", "b", "a', 'b", 'a", "b', "[1]", "(1,)"]
    assert len({echo_key(v) for v in values}) == len(values)
    assert echo_key(["a", "b"]) != echo_key(["a, b"])
    assert echo_key(["a", "b"]) != echo_key("a, b")


def test_nested_tasks_and_items_are_allowed() -> None:
    inner = Echo({"k": [1, 2]})
    arg = [inner, {"item": inner["k"][0], "deep": (Echo(2),)}]
    outer = Echo(arg)
    assert inner.__af_key__ in outer.__af_key__
    # The same structure built again is the same node; a different inner task is not.
    assert Echo([Echo({"k": [1, 2]}), {"deep": (Echo(2),), "item": Echo({"k": [1, 2]})["k"][0]}]) == outer
    assert Echo([Echo({"k": [1, 3]}), {"item": inner["k"][0], "deep": (Echo(2),)}]) != outer
    # A task item is not its base task, and items differ by their path.
    assert echo_key(inner) != echo_key(inner["k"])
    assert echo_key(inner["k"][0]) != echo_key(inner["k"][1])
    assert echo_key(inner["k"][0]) != echo_key(inner["k"]["0"])


def test_tasks_of_different_classes_with_equal_arguments_differ() -> None:
    assert Echo(1) != Collect([])
    assert echo_key(Echo(1)) != echo_key(Choose(1, 1))


def test_keyword_and_positional_calls_are_the_same_node() -> None:
    expected = Choose(6, 3)
    assert Choose(n=6, k=3) == expected
    assert Choose(6, k=3) == expected
    assert Choose(k=3, n=6) == expected
    assert Choose(n=6, k=3).__af_key__ == expected.__af_key__
    assert Choose(3, 6) != expected


def test_defaults_give_the_same_node() -> None:
    expected = WithDefaults(5, 2, scale=1.0)
    assert WithDefaults(5) == expected
    assert WithDefaults(n=5) == expected
    assert WithDefaults(5, k=2) == expected
    assert WithDefaults(5, 3) != expected
    assert WithDefaults(5, scale=2.0) != expected
    # `1` is not `1.0` even where the default is a float.
    assert WithDefaults(5, scale=1) != expected


def test_extra_keywords_are_order_independent() -> None:
    assert WithDefaults(1, a=1, b=2) == WithDefaults(1, b=2, a=1)
    assert WithDefaults(1, a=1) != WithDefaults(1, a=2)
    assert WithDefaults(1, a=1) != WithDefaults(1)


def test_wrong_call_is_a_definition_error() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"Choose") as info:
        Choose(1)
    assert "'k'" in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
    ],
)
def test_nonfinite_floats_have_stable_keys(value: float, text: str) -> None:
    # A fresh float object each time: the key must not depend on identity.
    assert Echo(value) == Echo(float(text))
    assert Echo([value]) == Echo([float(text)])
    assert echo_key(value) != echo_key(text)


def test_nonfinite_floats_are_distinct_from_each_other() -> None:
    keys = {echo_key(float("nan")), echo_key(float("inf")), echo_key(float("-inf")), echo_key(1e308)}
    assert len(keys) == 4


def test_float_keys_keep_full_precision() -> None:
    assert echo_key(0.1 + 0.2) != echo_key(0.3)
    assert echo_key(1e16) != echo_key(1e16 + 2)


async def test_int_float_bool_run_separately(cache_dir: Path) -> None:
    tasks = [Echo(1), Echo(1.0), Echo(True)]
    with anyio.fail_after(30):
        result, stats = await Collect(tasks).run_with_stats(cache_dir=cache_dir)
    assert stats[Echo.task_name].run == 3
    assert stats[Echo.task_name].reused == 0
    assert [type(v) for v in result] == [int, float, bool]
    # Each is cached under its own key: asking for one gives that one back.
    assert type(await Echo(1.0).result(cache_dir=cache_dir)) is float
    assert type(await Echo(True).result(cache_dir=cache_dir)) is bool
    assert type(await Echo(1).result(cache_dir=cache_dir)) is int


async def test_tuple_and_list_run_separately(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        result, stats = await Collect([Echo((1, 2)), Echo([1, 2])]).run_with_stats(cache_dir=cache_dir)
    assert stats[Echo.task_name].run == 2
    assert result == [(1, 2), [1, 2]]
    assert [type(v) for v in result] == [tuple, list]


async def test_reordered_dict_is_one_node_in_a_run(cache_dir: Path) -> None:
    tasks = [Echo({"a": 1, "b": 2}), Echo({"b": 2, "a": 1})]
    with anyio.fail_after(30):
        _, stats = await Gather(tasks).run_with_stats(cache_dir=cache_dir)
        assert stats[Echo.task_name].run == 1
        # A later run with the keys in yet another order reuses the cached node.
        _, stats = await Echo({"b": 2, "a": 1}).run_with_stats(cache_dir=cache_dir)
    assert stats[Echo.task_name].reused == 1
    assert stats[Echo.task_name].run == 0


async def test_keyword_call_reuses_positional_node(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await Choose(6, 3).run(cache_dir=cache_dir) == (6, 3)
        value, stats = await Choose(n=6, k=3).run_with_stats(cache_dir=cache_dir)
    assert value == (6, 3)
    assert stats[Choose.task_name].reused == 1
    assert stats[Choose.task_name].run == 0


async def test_nonfinite_floats_run_and_are_reused(cache_dir: Path) -> None:
    tasks = [Echo(float("nan")), Echo(float("inf")), Echo(float("-inf"))]
    with anyio.fail_after(30):
        result, stats = await Collect(tasks).run_with_stats(cache_dir=cache_dir)
        assert stats[Echo.task_name].run == 3
        assert math.isnan(result[0])
        assert result[1:] == [math.inf, -math.inf]
        again = [Echo(float("nan")), Echo(float("inf")), Echo(float("-inf"))]
        _, stats = await Collect(again).run_with_stats(cache_dir=cache_dir)
    assert stats[Echo.task_name].reused == 3
    assert stats[Echo.task_name].run == 0


# Refused arguments.

_ALLOWED = "None, bool, int, float, str"


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param(object(), "object", id="object"),
        pytest.param(1 + 2j, "complex", id="complex"),
        pytest.param(memoryview(b"x"), "memoryview", id="memoryview"),
        pytest.param(range(3), "range", id="range"),
        pytest.param(Fraction(1, 3), "fractions.Fraction", id="fraction"),
        pytest.param(Thing(), f"{__name__}.Thing", id="user-class"),
        pytest.param(Thing, "type", id="a-class"),
        pytest.param(len, "builtin_function_or_method", id="function"),
    ],
)
def test_unsupported_argument_is_refused(value: object, type_name: str) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Echo(value)
    error = info.value
    assert isinstance(error, TypeError)
    message = str(error)
    assert message.startswith("Echo(")
    assert "'x'" in message
    assert f" {type_name}," in message
    assert _ALLOWED in message  # the accepted set, so the user knows what to pass
    assert "register_key(type, encode)" in message  # and how to make their own type a key
    assert "\n" not in message  # the first line stands alone


def test_dict_with_int_keys_is_refused() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Echo({1: "a"})
    message = str(info.value)
    assert message.startswith("Echo(")
    assert "'x'" in message
    assert "int" in message
    assert "str keys" in message


@pytest.mark.parametrize("key", [1.5, None, True, ("a",)], ids=["float", "None", "bool", "tuple"])
def test_dict_with_non_str_keys_is_refused(key: object) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"^Echo\(.*'x'"):
        Echo({key: 1})


@pytest.mark.parametrize(
    ("value", "path", "type_name"),
    [
        pytest.param([1, {"a": 2j}], "x[1]['a']", "complex", id="list-dict-complex"),
        pytest.param({"a": (1, object())}, "x['a'][1]", "object", id="dict-tuple-object"),
        pytest.param([[[1j]]], "x[0][0][0]", "complex", id="deep-list"),
        pytest.param({frozenset({1j})}, "x member member", "complex", id="set-member"),
        pytest.param(Point(1, 1j), "x field 'y'", "complex", id="dataclass-field"),
        pytest.param(Pair(1j, 2), "x field 'a'", "complex", id="namedtuple-field"),
        pytest.param({"outer": {2: "v"}}, "x['outer']", "int", id="nested-int-key"),
    ],
)
def test_nested_unsupported_value_names_its_path(value: object, path: str, type_name: str) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Echo(value)
    message = str(info.value)
    assert message.startswith("Echo(")
    assert "'x'" in message
    assert path in message
    assert type_name in message


def test_refused_argument_names_the_right_parameter() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Choose(6, 3j)
    message = str(info.value)
    assert message.startswith("Choose(")
    assert "'k'" in message
    assert "'n'" not in message
    assert "complex" in message


def test_refused_keyword_argument_names_the_keyword() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        WithDefaults(1, scale=object())
    message = str(info.value)
    assert message.startswith("WithDefaults(")
    assert "'scale'" in message
    assert "object" in message

    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        WithDefaults(1, extra_thing=1j)
    assert "'extra_thing'" in str(info.value)


def test_const_is_refused_as_an_argument() -> None:
    # A Const stands where a requirement could hold a task; it is not an argument.
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"^Echo\(.*'x'.*Const"):
        Echo(Const(1))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Const(1)[0], id="const-int"),
        pytest.param(lambda: Const(Thing())["a"], id="const-object"),
        pytest.param(lambda: Const({"b": 1, "a": 2})["a"], id="const-dict"),
    ],
)
def test_item_of_a_const_is_refused_like_a_const(make: Callable[[], object]) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"^Echo\(.*'x'"):
        Echo(make())


def test_int_subclass_is_refused() -> None:
    # It would key like its int but may compare, print and pickle differently.
    class Count(int):
        pass

    with pytest.raises(asyncflow.TaskDefinitionError, match=r"Count"):
        Echo(Count(1))


def test_int_enum_member_is_not_its_int() -> None:
    # An IntEnum member equals its int, but prints and pickles as the member.
    assert echo_key(Level.HIGH) != echo_key(2)
    assert echo_key([Level.HIGH]) != echo_key([2])


def test_refusal_happens_at_construction_not_at_run() -> None:
    # No run, no event loop: making the task is enough to be told.
    with pytest.raises(TypeError):
        Collect([Echo({1j})])


# Richer values: how each reads in a key. These texts are cache keys: changing one makes
# every cached result with such an argument stale, so a change here must be deliberate.

UTC_PLUS_1 = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # The JSON-like values keep the keys they always had.
        pytest.param(None, "None", id="None"),
        pytest.param(True, "True", id="bool"),
        pytest.param(-5, "-5", id="int"),
        pytest.param(1.5, "1.5", id="float"),
        pytest.param(float("nan"), "float('nan')", id="nan"),
        pytest.param("a'b", '"a\'b"', id="str"),
        pytest.param(
            [1, (2,), {"b": [None], "a": (1.0, "x")}],
            "[1, (2,), {'a': (1.0, 'x'), 'b': [None]}]",
            id="nested",
        ),
        pytest.param((), "()", id="empty-tuple"),
        pytest.param({}, "{}", id="empty-dict"),
        # The richer ones.
        pytest.param(PurePosixPath("data/x.csv"), "pathlib.PurePosixPath('data/x.csv')", id="pure-path"),
        pytest.param(PureWindowsPath("C:/data"), "pathlib.PureWindowsPath('C:\\\\data')", id="windows-path"),
        pytest.param(datetime(2024, 1, 2, 3, 4), "datetime.datetime(2024, 1, 2, 3, 4)", id="datetime"),
        pytest.param(
            datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
            "datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)",
            id="datetime-utc",
        ),
        pytest.param(
            datetime(2024, 1, 2, tzinfo=UTC_PLUS_1, fold=1),
            "datetime.datetime(2024, 1, 2, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(seconds=3600)), fold=1)",
            id="datetime-offset-fold",
        ),
        pytest.param(date(2024, 1, 2), "datetime.date(2024, 1, 2)", id="date"),
        pytest.param(time(3, 4, 5), "datetime.time(3, 4, 5)", id="time"),
        pytest.param(
            time(3, 4, tzinfo=timezone.utc),
            "datetime.time(3, 4, tzinfo=datetime.timezone.utc)",
            id="time-aware",
        ),
        pytest.param(timedelta(0), "datetime.timedelta(0)", id="timedelta-zero"),
        pytest.param(timedelta(days=-1, seconds=5), "datetime.timedelta(days=-1, seconds=5)", id="timedelta"),
        pytest.param(decimal.Decimal("1.10"), "decimal.Decimal('1.10')", id="decimal"),
        pytest.param(decimal.Decimal("1E+2"), "decimal.Decimal('1E+2')", id="decimal-exponent"),
        pytest.param(decimal.Decimal("-0"), "decimal.Decimal('-0')", id="decimal-negative-zero"),
        pytest.param(uuid.UUID(int=5), "uuid.UUID('00000000-0000-0000-0000-000000000005')", id="uuid"),
        pytest.param(b"a\x00'", 'b"a\\x00\'"', id="bytes"),
        pytest.param(bytearray(b"ab"), "bytearray(b'ab')", id="bytearray"),
        pytest.param({3, 1, 2}, "{1, 2, 3}", id="set"),
        pytest.param(set(), "set()", id="empty-set"),
        pytest.param(frozenset({"b", "a"}), "frozenset({'a', 'b'})", id="frozenset"),
        pytest.param(frozenset(), "frozenset()", id="empty-frozenset"),
        pytest.param(Colour.RED, f"{__name__}.Colour.RED(1)", id="enum"),
        pytest.param(Colour.BLUE, f"{__name__}.Colour.BLUE((0, 0, 255))", id="enum-tuple-value"),
        pytest.param(Level.HIGH, f"{__name__}.Level.HIGH(2)", id="int-enum"),
        pytest.param(Point(1, [2]), f"{__name__}.Point(x=1, y=[2])", id="dataclass"),
        pytest.param(
            Point(Point(1)), f"{__name__}.Point(x={__name__}.Point(x=1, y=0), y=0)", id="dataclass-nested"
        ),
        pytest.param(Pair(1, "b"), f"{__name__}.Pair(a=1, b='b')", id="namedtuple"),
        pytest.param(OldPair(1, 2), f"{__name__}.OldPair(a=1, b=2)", id="collections-namedtuple"),
    ],
)
def test_encoding_reads_like_the_value(value: object, text: str) -> None:
    assert _keys.encode(value) == text
    assert echo_key(value) == f"{Echo.task_name}({text})"


def test_concrete_path_is_keyed_by_its_class_and_path() -> None:
    # PosixPath or WindowsPath, named as pathlib exports it (on 3.13 it lives in pathlib._local).
    path = Path("data") / "x.csv"
    assert _keys.encode(path) == f"pathlib.{type(path).__name__}({str(path)!r})"


def test_zoneinfo_is_keyed_by_its_name() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    value = datetime(2024, 7, 1, 12, tzinfo=paris)
    assert (
        _keys.encode(value)
        == "datetime.datetime(2024, 7, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))"
    )
    # The same instant with a fixed offset is another value: it moves differently in time.
    assert echo_key(value) != echo_key(value.astimezone(timezone(timedelta(hours=2))))


def test_flag_combination_is_keyed() -> None:
    combined = Perm.R | Perm.W
    assert echo_key(combined) != echo_key(Perm.R)
    assert Echo(Perm.R | Perm.W) == Echo(Perm.W | Perm.R)


def test_decimal_key_ignores_the_decimal_context() -> None:
    with decimal.localcontext() as context:
        context.capitals = 0  # str(Decimal("1E+2")) is now "1e+2"
        assert _keys.encode(decimal.Decimal("1E+2")) == "decimal.Decimal('1E+2')"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(
            [Path("a"), "a", PurePosixPath("a"), PureWindowsPath("a"), Path("b"), Path("a/b")], id="path"
        ),
        pytest.param(
            [
                datetime(2024, 1, 2),
                datetime(2024, 1, 2, tzinfo=timezone.utc),
                datetime(2024, 1, 2, 1, tzinfo=UTC_PLUS_1),  # the same instant, another offset
                datetime(2024, 1, 2, fold=1),
                date(2024, 1, 2),
                "2024-01-02",
            ],
            id="datetime",
        ),
        pytest.param([time(3), time(3, tzinfo=timezone.utc), timedelta(hours=3), 3], id="time"),
        pytest.param(
            [decimal.Decimal("1.10"), decimal.Decimal("1.1"), 1.1, "1.1", decimal.Decimal("1")], id="decimal"
        ),
        pytest.param([Colour.RED, 1, Level.LOW, "Colour.RED", Colour.GREEN, "green"], id="enum"),
        pytest.param([uuid.UUID(int=1), str(uuid.UUID(int=1)), uuid.UUID(int=1).bytes], id="uuid"),
        pytest.param([b"a", "a", bytearray(b"a"), [97], b""], id="bytes"),
        pytest.param([{1, 2}, frozenset({1, 2}), [1, 2], (1, 2)], id="sets"),
        pytest.param([set(), frozenset(), [], (), {}], id="empty"),
        pytest.param(
            [Pair(1, 2), (1, 2), [1, 2], OldPair(1, 2), Point(1, 2), OtherPoint(1, 2), {"a": 1, "b": 2}],
            id="records",
        ),
        pytest.param([Point(1), Point(1.0), Point(True), Point("1")], id="record-fields"),
        pytest.param([1, 1.0, True], id="json"),
    ],
)
def test_values_that_differ_have_different_keys(values: list[object]) -> None:
    keys = [_keys.encode(v) for v in values]
    assert len(set(keys)) == len(keys), keys


def test_equal_values_have_the_same_key() -> None:
    assert Echo(Point(1, [2])) == Echo(Point(1, [2]))
    assert Echo(Pair(1, {"b": 1, "a": 2})) == Echo(Pair(1, {"a": 2, "b": 1}))
    assert Echo(decimal.Decimal("1.10")) == Echo(decimal.Decimal("1.10"))
    assert Echo(datetime(2024, 1, 2, tzinfo=timezone.utc)) == Echo(datetime(2024, 1, 2, tzinfo=timezone.utc))
    assert Echo(uuid.UUID(int=7)) == Echo(uuid.UUID(str(uuid.UUID(int=7))))


def test_enum_key_changes_with_the_member_value() -> None:
    before = enum.Enum("Mode", {"FAST": 1}, module=__name__, qualname="Mode")
    after = enum.Enum("Mode", {"FAST": 2}, module=__name__, qualname="Mode")
    assert echo_key(before.FAST) != echo_key(after.FAST)
    assert echo_key(before.FAST).startswith(f"{Echo.task_name}({__name__}.Mode.FAST(")


def test_set_key_does_not_depend_on_insertion_order() -> None:
    words = [f"w{i}" for i in range(50)]
    forward, backward = set(words), set()
    for word in reversed(words):
        backward.add(word)
    assert Echo(forward) == Echo(backward)
    assert Echo(frozenset(words)) == Echo(frozenset(reversed(words)))
    # Items equal in Python collapse in the set itself; their keys never decide that.
    assert Echo({1, 2}) == Echo({2, 1})
    assert Echo({(1, "a"), (2, "b")}) == Echo({(2, "b"), (1, "a")})


def sample_value() -> object:
    """A value of every standard kind, for the keys-across-processes test."""
    return [
        {"words": {f"w{i}" for i in range(30)}, "frozen": frozenset({"x", "y", "z", (1, "t")})},
        Path("data/x.csv"),
        datetime(2024, 1, 2, 3, 4, tzinfo=UTC_PLUS_1),
        date(2024, 1, 2),
        decimal.Decimal("1.10"),
        Colour.BLUE,
        uuid.UUID(int=42),
        b"\x00\xff",
        Point(Pair("a", {"s", "t", "u"}), OldPair(1, 2)),
    ]


def _key_in_a_process(expression: str, seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    code = f"import tests.test_keys as t\nfrom asyncflow import _keys\nprint(_keys.encode({expression}))"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.rstrip("\n")


def test_keys_are_the_same_in_other_processes() -> None:
    # str hashes (so set order) differ between processes unless PYTHONHASHSEED fixes them.
    here = _keys.encode(sample_value())
    assert _key_in_a_process("t.sample_value()", "1") == here
    assert _key_in_a_process("t.sample_value()", "2") == here


def test_key_is_not_an_address() -> None:
    text = _keys.encode(sample_value())
    assert " at 0x" not in text
    assert "object at" not in text


# Frozen dataclasses and NamedTuples.


def test_dataclass_that_is_not_frozen_is_refused_with_the_fix() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Echo(Loose(1))
    message = str(info.value)
    assert message.startswith("Echo(")
    assert f"{__name__}.Loose" in message
    assert "@dataclass(frozen=True)" in message


def test_dataclass_class_itself_is_refused() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"argument 'x' is a type"):
        Echo(Point)


def test_namedtuple_is_not_a_plain_tuple() -> None:
    assert Echo(Pair(1, 2)) != Echo((1, 2))
    assert Echo([Pair(1, 2)]) != Echo([(1, 2)])
    assert Echo(Pair(1, 2)) != Echo(Pair(2, 1))


def test_dataclass_fields_are_told_apart() -> None:
    assert Echo(Point(1)) != Echo(Point(1.0))
    assert Echo(Point(1)) != Echo(Point(True))
    assert Echo(Point(1, 2)) != Echo(OtherPoint(1, 2))


# register_key: the user's own types.


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep each test's registrations to itself."""
    monkeypatch.setattr(_keys, "_REGISTERED", {})


@pytest.mark.usefixtures("registry")
def test_registered_type_is_keyed_by_its_encoding() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"Money"):
        Echo(Money("EUR", 1250))
    asyncflow.register_key(Money, lambda m: (m.currency, m.cents))
    assert _keys.encode(Money("EUR", 1250)) == f"{__name__}.Money(('EUR', 1250))"
    assert Echo(Money("EUR", 1250)) == Echo(Money("EUR", 1250))
    assert Echo(Money("EUR", 1250)) != Echo(Money("USD", 1250))
    assert Echo(Money("EUR", 1)) != Echo(("EUR", 1))


@pytest.mark.usefixtures("registry")
def test_registered_encoding_is_canonical() -> None:
    # A dict in any order, a set: the encoder's result is encoded canonically in turn.
    orders = iter([{"c": "EUR", "n": 1}, {"n": 1, "c": "EUR"}])
    asyncflow.register_key(Money, lambda m: next(orders))
    assert Echo(Money("EUR", 1)) == Echo(Money("EUR", 1))


@pytest.mark.usefixtures("registry")
def test_registering_again_replaces_the_encoder() -> None:
    asyncflow.register_key(Money, lambda m: m.currency)
    first = echo_key(Money("EUR", 1))
    asyncflow.register_key(Money, lambda m: (m.currency, m.cents))
    assert echo_key(Money("EUR", 1)) != first
    assert echo_key(Money("EUR", 1)) != echo_key(Money("EUR", 2))


@pytest.mark.usefixtures("registry")
def test_registering_replaces_the_encoding_of_a_dataclass() -> None:
    asyncflow.register_key(Point, lambda p: p.x)
    assert _keys.encode(Point(1, "ignored")) == f"{__name__}.Point(1)"


@pytest.mark.usefixtures("registry")
def test_registered_encoding_nests() -> None:
    asyncflow.register_key(Money, lambda m: {"currency": m.currency, "cents": m.cents})
    text = _keys.encode({"price": [Money("EUR", 1)]})
    assert text == f"{{'price': [{__name__}.Money({{'cents': 1, 'currency': 'EUR'}})]}}"


@pytest.mark.usefixtures("registry")
def test_subclass_of_a_registered_type_is_not_covered() -> None:
    class Coins(Money):
        pass

    asyncflow.register_key(Money, lambda m: m.cents)
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"Coins"):
        Echo(Coins("EUR", 1))


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize(
    "cls",
    [int, str, bool, float, type(None), list, dict, tuple, set, frozenset, bytes, bytearray,
     decimal.Decimal, uuid.UUID, datetime, date, time, timedelta, timezone, Path, PurePosixPath, type(Path())],
)  # fmt: skip
def test_registering_a_type_asyncflow_encodes_is_refused(cls: type) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"already encodes") as info:
        asyncflow.register_key(cls, repr)
    assert str(info.value).startswith("register_key(")
    assert cls not in _keys._REGISTERED


@pytest.mark.usefixtures("registry")
def test_registering_a_task_class_is_refused() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"is a task"):
        asyncflow.register_key(Echo, repr)


@pytest.mark.usefixtures("registry")
def test_register_key_checks_its_arguments() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"must be a class"):
        asyncflow.register_key(Money("EUR", 1), repr)  # type: ignore[arg-type]
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"must be a function"):
        asyncflow.register_key(Money, "currency")  # type: ignore[arg-type]


@pytest.mark.usefixtures("registry")
def test_encoder_returning_its_own_type_is_refused() -> None:
    asyncflow.register_key(Money, lambda m: Money(m.currency, m.cents))  # would never end
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"register_key's encoder for .*Money"):
        Echo(Money("EUR", 1))


@pytest.mark.usefixtures("registry")
def test_encoder_returning_something_unkeyable_names_the_place() -> None:
    asyncflow.register_key(Money, lambda m: [m.currency, object()])
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Echo({"price": Money("EUR", 1)})
    assert "x['price'] encoded[1]" in str(info.value)
    assert "an object" in str(info.value)


# Depth and cycles.

DEPTH = 10_000


def test_deeply_nested_lists_are_encoded() -> None:
    value: Any = []
    for _ in range(DEPTH):
        value = [value]
    task = Echo(value)
    assert task.__af_key__ == f"{Echo.task_name}({'[' * (DEPTH + 1)}{']' * (DEPTH + 1)})"
    assert Echo(value) == task
    assert Const(value).token.startswith("k[[[")


def test_deeply_nested_dicts_and_tuples_are_encoded() -> None:
    value: Any = {}
    for i in range(DEPTH):
        value = {"a": value} if i % 2 else (value, frozenset({i}))
    assert Echo(value) == Echo(value)
    assert len(echo_key(value)) > 10 * DEPTH


def test_deep_nesting_refusal_names_the_path() -> None:
    value: Any = 1j
    for _ in range(DEPTH):
        value = [value]
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Echo(value)
    assert "x" + "[0]" * DEPTH in str(info.value)


def test_list_that_holds_itself_is_refused() -> None:
    value: list[Any] = [1]
    value.append(value)
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        Echo(value)
    message = str(info.value)
    assert message.startswith("Echo(")
    assert "at x[1] (which is x again: it holds itself)" in message


def test_cycle_through_dicts_and_records_is_refused() -> None:
    inner: dict[str, Any] = {}
    value = [0, Point(inner)]
    inner["back"] = value
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"which is x again: it holds itself"):
        Echo(value)
    with pytest.raises(_keys.UnsupportedValueError, match=r"holds itself"):
        _keys.encode(value)


def test_value_that_holds_itself_still_has_a_const_token() -> None:
    # A Const is identified by its pickle when it has no key.
    value: list[Any] = []
    value.append(value)
    assert Const(value).token.startswith("p")


def test_shared_values_are_not_cycles() -> None:
    shared = [1, {"a": 2}]
    assert echo_key([shared, shared, (shared,)]) == echo_key([[1, {"a": 2}]] * 2 + [([1, {"a": 2}],)])


def test_const_token_follows_the_key() -> None:
    assert Const(Point(1)).token == "k" + _keys.encode(Point(1))
    assert Const(datetime(2024, 1, 2)).token == Const(datetime(2024, 1, 2)).token
    assert Const({3, 1, 2}).token == "k{1, 2, 3}"
    assert Const(1).token == "k1"
    assert Const(Thing()).token.startswith("p")


def test_encoding_imports_nothing_of_its_own() -> None:
    # decimal, uuid, datetime, zoneinfo, numpy and pandas are the user's to import.
    code = (
        "import sys\nimport asyncflow\nfrom asyncflow import _keys\n"
        "_keys.encode([1, 'a', {'b': (2.0, None)}, {3}, b'x'])\n"
        "print(sorted(m for m in ('decimal', 'uuid', 'datetime', 'zoneinfo', 'numpy', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# A task taking such arguments runs, and its result is reused.


def rich_arguments() -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Fresh objects each call: the second run must find the first one's keys."""
    values = (
        Path("data/x.csv"),
        datetime(2024, 1, 2, 3, 4, tzinfo=timezone.utc),
        datetime(2024, 1, 2, 3, 4),
        decimal.Decimal("1.10"),
        Colour.BLUE,
        uuid.UUID(int=3),
        b"bytes",
        {f"w{i}" for i in range(20)},
        frozenset({1, 2}),
        Point(1, (2, 3)),
        Pair("a", [1]),
    )
    return values, {"when": date(2024, 1, 2), "span": timedelta(hours=1), "level": Level.HIGH}


async def test_task_with_rich_arguments_runs_and_is_reused(cache_dir: Path) -> None:
    values, named = rich_arguments()
    with anyio.fail_after(30):
        result, stats = await Rich(*values, **named).run_with_stats(cache_dir=cache_dir)
        assert stats[Rich.task_name].run == 1
        assert result == (values, named)
        values2, named2 = rich_arguments()
        again, stats = await Rich(*values2, **named2).run_with_stats(cache_dir=cache_dir)
        assert stats[Rich.task_name].reused == 1
        assert stats[Rich.task_name].run == 0
        assert again == result
        # A different value is another node.
        _, stats = await Rich(*values2[:-1], Pair("a", [2]), **named2).run_with_stats(cache_dir=cache_dir)
    assert stats[Rich.task_name].run == 1


async def test_registered_argument_runs_and_is_reused(cache_dir: Path, registry: None) -> None:
    asyncflow.register_key(Money, lambda m: (m.currency, m.cents))
    with anyio.fail_after(30):
        assert await Rich(Money("EUR", 5)).run(cache_dir=cache_dir) == ((Money("EUR", 5),), {})
        _, stats = await Rich(Money("EUR", 5)).run_with_stats(cache_dir=cache_dir)
    assert stats[Rich.task_name].reused == 1


# numpy and pandas, when installed.


def test_numpy_scalars_are_keyed_by_type_and_value() -> None:
    np = pytest.importorskip("numpy")
    assert _keys.encode(np.int64(5)) == "numpy.int64(5)"
    assert _keys.encode(np.float64(0.5)) == "numpy.float64(0.5)"
    assert _keys.encode(np.datetime64("2024-01-02")) == "numpy.datetime64[D]('2024-01-02')"
    keys = [np.int64(1), np.int32(1), np.float64(1), np.bool_(True), 1, 1.0, True, np.str_("1"), "1"]
    assert len({_keys.encode(v) for v in keys}) == len(keys)
    assert _keys.encode(np.datetime64("2024-01-02")) != _keys.encode(np.datetime64("2024-01-02T00:00"))


def test_numpy_arrays_are_keyed_by_dtype_shape_and_content() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(6, dtype=np.int64)
    text = _keys.encode(a)
    assert text.startswith("numpy.ndarray(int64, (6,), ")
    assert len(text.rpartition(", ")[2]) == len("0123456789abcdef)")
    assert _keys.encode(np.arange(6, dtype=np.int64)) == text  # equal content, equal key
    others = [
        a.reshape(2, 3),
        a.astype(np.int32),
        a.astype(np.float64),
        a.astype(">i8"),  # the same numbers, other bytes
        a + 1,
        a[:5],
        a.astype(object),
        a.tolist(),
    ]
    assert len({text, *(_keys.encode(o) for o in others)}) == len(others) + 1
    # Memory layout is not content: a Fortran-ordered copy is the same array.
    b = np.arange(6.0).reshape(2, 3)
    assert _keys.encode(np.asfortranarray(b)) == _keys.encode(b)


def test_numpy_object_arrays_are_keyed_by_their_items() -> None:
    np = pytest.importorskip("numpy")
    assert _keys.encode(np.array([1, "a"], dtype=object)) != _keys.encode(np.array(["1", "a"], dtype=object))
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"at x\[1\], an object"):
        Echo(np.array([1, object()], dtype=object))


def test_numpy_types_without_a_faithful_key_are_refused() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"MaskedArray"):
        Echo(np.ma.masked_array([1, 2], mask=[0, 1]))  # a masked array hides values


def test_pandas_objects_are_keyed_by_type_labels_dtypes_and_content() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    text = _keys.encode(frame)
    assert text.startswith("pandas.DataFrame((2, 2), ")
    assert _keys.encode(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})) == text
    others = [
        pd.DataFrame({"a": [1, 3], "b": ["x", "y"]}),
        pd.DataFrame({"a": [1, 2], "c": ["x", "y"]}),
        pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}),
        pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=[1, 2]),
        pd.DataFrame({"b": ["x", "y"], "a": [1, 2]}),
        frame.astype({"b": "category"}),
        frame.astype({"b": "string"}),
    ]
    assert len({text, *(_keys.encode(o) for o in others)}) == len(others) + 1
    series = pd.Series([1, 2, 3], name="s")
    assert _keys.encode(series).startswith("pandas.Series(int64, (3,), ")
    assert _keys.encode(series) != _keys.encode(series.rename("t"))
    assert _keys.encode(pd.Index(["a", "b"])).startswith("pandas.Index(")
    assert _keys.encode(pd.RangeIndex(3)) != _keys.encode(pd.Index([0, 1, 2]))


def test_pandas_values_that_hash_alike_keep_apart() -> None:
    pd = pytest.importorskip("pandas")
    # hash_pandas_object alone takes both of each pair for one value.
    pairs = [
        (pd.Series([1], dtype=object), pd.Series(["1"], dtype=object)),
        (pd.Series([True], dtype=object), pd.Series(["True"], dtype=object)),
        (pd.Series(["nan", "a"]), pd.Series([None, "a"])),
        (pd.Series(["None", "a"], dtype="string"), pd.Series([None, "a"], dtype="string")),
    ]
    for left, right in pairs:
        assert _keys.encode(left) != _keys.encode(right), (left, right)


def test_pandas_object_column_with_an_unkeyable_item_names_it() -> None:
    pd = pytest.importorskip("pandas")
    with pytest.raises(asyncflow.TaskDefinitionError, match=r"at x column 'a'\[1\], an object"):
        Echo(pd.DataFrame({"a": [1, object()]}))


def pandas_sample() -> object:
    """numpy and pandas values whose keys must not change between processes."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"n": [1, 2], "s": ["a", None], "o": pd.Series([1, "x"], dtype=object)})
    return [
        np.arange(3),
        frame,
        frame.set_index("s").index,
        np.float32(0.25),
        pd.Timestamp("2024-01-02", tz="UTC"),
    ]


def test_numpy_and_pandas_keys_are_the_same_in_other_processes() -> None:
    pytest.importorskip("pandas")
    here = _keys.encode(pandas_sample())
    assert _key_in_a_process("t.pandas_sample()", "3") == here
    assert _key_in_a_process("t.pandas_sample()", "4") == here


async def test_task_with_numpy_and_pandas_arguments_is_reused(cache_dir: Path) -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    with anyio.fail_after(30):
        _, stats = await Rich(np.arange(3), pd.DataFrame({"a": [1]})).run_with_stats(cache_dir=cache_dir)
        assert stats[Rich.task_name].run == 1
        again, stats = await Rich(np.arange(3), pd.DataFrame({"a": [1]})).run_with_stats(cache_dir=cache_dir)
    assert stats[Rich.task_name].reused == 1
    assert again[0][0].tolist() == [0, 1, 2]
