"""Canonical argument keys: what makes two tasks the same node, and what is refused."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import asyncflow
from asyncflow import Const, RequiresList, SinkTask, Task, _keys

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


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
        pytest.param({1, 2}, "set", id="set"),
        pytest.param(frozenset({1}), "frozenset", id="frozenset"),
        pytest.param(object(), "object", id="object"),
        pytest.param(b"bytes", "bytes", id="bytes"),
        pytest.param(1 + 2j, "complex", id="complex"),
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
        pytest.param([1, {"a": {1, 2}}], "x[1]['a']", "set", id="list-dict-set"),
        pytest.param({"a": (1, object())}, "x['a'][1]", "object", id="dict-tuple-object"),
        pytest.param([[[b"deep"]]], "x[0][0][0]", "bytes", id="deep-list"),
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
        Choose(6, {3})
    message = str(info.value)
    assert message.startswith("Choose(")
    assert "'k'" in message
    assert "'n'" not in message
    assert "set" in message


def test_refused_keyword_argument_names_the_keyword() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        WithDefaults(1, scale=object())
    message = str(info.value)
    assert message.startswith("WithDefaults(")
    assert "'scale'" in message
    assert "object" in message

    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        WithDefaults(1, extra_thing={1})
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
    # An IntEnum member would key like its int but compare and pickle differently.
    import enum

    class Colour(enum.IntEnum):
        RED = 1

    with pytest.raises(asyncflow.TaskDefinitionError, match=r"Colour"):
        Echo(Colour.RED)


def test_refusal_happens_at_construction_not_at_run() -> None:
    # No run, no event loop: making the task is enough to be told.
    with pytest.raises(TypeError):
        Collect([Echo({1})])


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
        value = {"a": value} if i % 2 else (value, i)
    assert Echo(value) == Echo(value)
    assert len(echo_key(value)) > 5 * DEPTH


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


def test_cycle_through_dicts_is_refused() -> None:
    inner: dict[str, Any] = {}
    value = [0, ({"inner": inner},)]
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
