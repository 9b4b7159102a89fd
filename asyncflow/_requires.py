"""Requirements: what a task reads from upstream, and how reading one yields a result.

`Requires[T]`, `RequiresList[T]` and `RequiresDict[K, T]` are data descriptors. While a
task is built, assigning to one records a task, a task item or a `Const`; while its
body runs, reading one gives the resolved value. No I/O here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from . import _keys
from ._errors import TaskDefinitionError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from typing_extensions import Self

    from ._task import Task

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
K = TypeVar("K")

# A task's requirements live in attributes only this module uses, read and set with
# getattr/setattr rather than through the instance dict: reading `obj.__dict__` would make
# CPython turn a task's compact attribute array into a dict of its own (see `Task.__init__`).
_REQS = "_af_reqs"  # attribute name -> requirement as assigned by build_task
_VALUES = "_af_values"  # attribute name -> resolved value, while the body runs


class TaskLike(Generic[T_co]):
    """Anything a requirement can hold: a task, an item of a task's result, or a `Const`."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> TaskItem[Any]:
        """Refer to ``result[key]`` of this task (chainable: ``t["a"][0]``)."""
        return TaskItem(self, (key,))

    def __iter__(self) -> NoReturn:
        """Refuse iteration (and ``in``, unpacking, ``list()``): a task is not its result."""
        # Without this, `__getitem__` makes Python iterate t[0], t[1], ... forever, each a
        # new item, until the process runs out of memory.
        raise TaskDefinitionError(_not_iterable(self))

    def __contains__(self, value: object) -> NoReturn:
        """Refuse ``in``, as iteration (Python would replace `__iter__`'s TypeError by its own)."""
        raise TaskDefinitionError(_not_iterable(self))


def _not_iterable(obj: TaskLike[Any]) -> str:
    """Say why `obj` cannot be iterated, and what to write instead."""
    if isinstance(obj, TaskItem):
        base, path = obj.base, "".join(f"[{k!r}]" for k in obj.path)
    else:
        base, path = obj, ""
    if isinstance(base, Const):
        # A Const's value is ready, but iterating a Const does not iterate it: a Const
        # stands where a task could, and code that iterated it would break the day a task
        # took its place. The value is at hand, so point there.
        return (
            f"{obj!r} is not its value, so it cannot be iterated: a requirement's value exists "
            f"only in run_task. This one is ready: iterate {base!r}.value{path}"
        )
    what = "is a task, not its result" if not path else f"stands for an item of {base!r}'s result"
    result = f"await {base!r}.run()" if not path else f"(await {base!r}.run()){path}"
    return (
        f"{obj!r} {what}, so it cannot be iterated: a requirement's value exists only in "
        f"run_task. To fan out over it, run the task first and pass the items as arguments "
        f"(items = {result}; [YourTask(x) for x in items]), or iterate it in run_task"
    )


class Const(TaskLike[T_co]):
    """A ready value standing where a requirement could hold a task."""

    __slots__ = ("_token", "value")

    def __init__(self, value: T_co) -> None:
        self.value: T_co = value
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"Const({self.value!r})"

    @property
    def token(self) -> str:
        """Identify the value for staleness (see `_keys.token`)."""
        if self._token is None:
            self._token = _keys.token(self.value)
        return self._token


class TaskItem(TaskLike[T_co]):
    """``task[key][key2]...``: an item of an upstream task's result."""

    __slots__ = ("__af_key__", "base", "path")

    base: TaskLike[Any]
    path: tuple[Any, ...]
    __af_key__: str | None
    """Its key (``"module.Class(args)[key]..."``); None for an item of a `Const`."""

    def __init__(self, base: TaskLike[Any], path: tuple[Any, ...]) -> None:
        if isinstance(base, TaskItem):
            item: TaskItem[Any] = base
            path = item.path + path
            base = item.base
        self.base = base
        self.path = path
        for key in path:  # an item is part of a cache key too, and looked up in a result
            try:
                _keys.encode(key)
                hash(key)
            except (_keys.UnsupportedValueError, TypeError):
                raise TaskDefinitionError(
                    f"{base!r}[{key!r}]: an item key must be hashable and have a cache key (an int, "
                    f"str, float, bool, None, a tuple of those, ...), got {_keys.a_type(key)}"
                ) from None
        base_key: str | None = getattr(base, "__af_key__", None)
        # An item of a Const has no canonical key: it cannot be a task argument.
        self.__af_key__ = (
            None if base_key is None else base_key + "".join(f"[{_keys.encode(k)}]" for k in path)
        )

    def __getitem__(self, key: Any) -> TaskItem[Any]:
        return TaskItem(self.base, (*self.path, key))

    def __repr__(self) -> str:
        return repr(self.base) + "".join(f"[{k!r}]" for k in self.path)


def _is_single(value: object) -> bool:
    return isinstance(value, TaskLike)


def _items(value: Any) -> list[object] | None:  # Any: checked here
    """Return the elements of a list, tuple or dict (its values), else None."""
    if isinstance(value, dict):
        values: list[object] = list(value.values())  # pyright: ignore[reportUnknownArgumentType]  # any dict
        return values
    if isinstance(value, (list, tuple)):
        items: list[object] = list(value)  # pyright: ignore[reportUnknownArgumentType]  # any sequence
        return items
    return None


class Requirement:
    """The run-time behaviour shared by `Requires`, `RequiresList` and `RequiresDict`."""

    kind: str = "one"
    name: str = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        values = getattr(obj, _VALUES, None)
        if values is not None:
            return values[self.name]
        reqs = getattr(obj, _REQS, None)
        if reqs is not None and self.name in reqs:
            return reqs[self.name]
        raise AttributeError(f"{obj!r}.{self.name} is a requirement that build_task has not set yet")

    def __set__(self, obj: object, value: Any) -> None:
        self._check(obj, value)
        reqs = getattr(obj, _REQS, None)
        if reqs is None:
            reqs = {}
            setattr(obj, _REQS, reqs)
        reqs[self.name] = value

    def _check(self, obj: object, value: object) -> None:
        if self.kind == "one":
            if _is_single(value):
                return
            raise TypeError(
                f"{obj!r}.{self.name} must be a task, a task item or Const(value), got "
                f"{_keys.type_name(value)}; wrap a ready value as Const(value)"
            )
        items = _items(value)
        if (self.kind == "dict") != isinstance(value, dict):
            items = None
        if items is not None and all(_is_single(v) for v in items):
            return
        what = "a dict" if self.kind == "dict" else "a list"
        got = _keys.type_name(value)
        if items is not None:
            bad = next(v for v in items if not _is_single(v))
            got = f"{_keys.a_type(value)} holding {_keys.a_type(bad)}"
        raise TypeError(f"{obj!r}.{self.name} must be {what} of tasks, task items or Const(value), got {got}")


class Requires(Requirement, Generic[T]):
    """A requirement holding one task-like; reading it during the run gives a ``T``."""

    if TYPE_CHECKING:

        @overload
        def __get__(self, obj: None, owner: type | None = None) -> Self: ...
        @overload
        def __get__(self, obj: object, owner: type | None = None) -> T: ...
        def __get__(self, obj: object | None, owner: type | None = None) -> Any: ...
        def __set__(self, obj: object, value: TaskLike[T]) -> None: ...


class RequiresList(Requirement, Generic[T]):
    """A requirement holding a list of task-likes; reading it gives a ``list[T]``."""

    kind = "list"

    if TYPE_CHECKING:

        @overload
        def __get__(self, obj: None, owner: type | None = None) -> Self: ...
        @overload
        def __get__(self, obj: object, owner: type | None = None) -> list[T]: ...
        def __get__(self, obj: object | None, owner: type | None = None) -> Any: ...
        def __set__(self, obj: object, value: Sequence[TaskLike[T]]) -> None: ...


class RequiresDict(Requirement, Generic[K, T]):
    """A requirement holding a dict of task-likes; reading it gives a ``dict[K, T]``."""

    kind = "dict"

    if TYPE_CHECKING:

        @overload
        def __get__(self, obj: None, owner: type | None = None) -> Self: ...
        @overload
        def __get__(self, obj: object, owner: type | None = None) -> dict[K, T]: ...
        def __get__(self, obj: object | None, owner: type | None = None) -> Any: ...
        def __set__(self, obj: object, value: Mapping[K, TaskLike[T]]) -> None: ...


def Req() -> Any:
    """Declare a requirement attribute: ``prev: Requires[int] = Req()``.

    The annotation decides whether it holds one task-like, a list or a dict.
    """
    return Requirement()


REQUIRES_KINDS: dict[str, type[Requirement]] = {
    "Requires": Requires,
    "RequiresList": RequiresList,
    "RequiresDict": RequiresDict,
}


_NONE: dict[str, Any] = {}


def requirements_of(task: object) -> dict[str, Any]:
    """Return the requirements `task`'s build_task assigned, by attribute name (do not mutate)."""
    return getattr(task, _REQS, None) or _NONE


def set_values(task: object, values: dict[str, Any]) -> None:
    """Make reading `task`'s requirements give `values` (by attribute name): its body runs."""
    setattr(task, _VALUES, values)


def values_of(task: object) -> dict[str, Any]:
    """Return the values `set_values` gave (by attribute name), none outside a body's attempt."""
    return getattr(task, _VALUES, None) or {}


def clear_values(task: object) -> None:
    """Forget the values `set_values` gave (they may be large): the body has ended."""
    setattr(task, _VALUES, None)  # not removed: the key stays where `Task.__init__` put it


def without_requirements(state: dict[str, Any]) -> dict[str, Any]:
    """Return a task's instance dict minus its requirements, as a worker gets it.

    A worker needs the resolved values, not the upstream tasks (the whole graph).
    """
    return {k: v for k, v in state.items() if k != _REQS}


def sources_of(value: object) -> list[TaskLike[Any]]:
    """Return the tasks and Consts a requirement value reads (an item reads its base)."""
    items: Iterable[object]
    if isinstance(value, TaskLike):
        items = (value,)  # pyright: ignore[reportUnknownVariableType]  # any task-like
    elif isinstance(value, dict):
        items = value.values()  # pyright: ignore[reportUnknownVariableType]  # checked on assignment
    else:
        items = value  # type: ignore[assignment]  # a list or tuple of task-likes, checked on assignment
    return [v.base if isinstance(v, TaskItem) else v for v in items]  # type: ignore[misc]  # task-likes


def resolve(value: object, result_of: Callable[[Task[Any, Any]], Any]) -> Any:
    """Replace every task-like in a requirement value by what it yields."""
    if isinstance(value, Const):
        const: Const[Any] = value  # pyright: ignore[reportUnknownVariableType]  # any Const
        return const.value
    if isinstance(value, TaskItem):
        item: TaskItem[Any] = value  # pyright: ignore[reportUnknownVariableType]  # any item
        out = resolve(item.base, result_of)
        for key in item.path:
            out = out[key]
        return out
    if isinstance(value, TaskLike):
        return result_of(value)  # type: ignore[arg-type]  # the only other TaskLike is Task
    if isinstance(value, dict):
        mapping: dict[Any, object] = value  # pyright: ignore[reportUnknownVariableType]  # checked on assignment
        return {k: resolve(v, result_of) for k, v in mapping.items()}
    return [resolve(v, result_of) for v in _items(value) or ()]
