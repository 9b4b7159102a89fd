"""`Task` and its kin: class keywords, canonical node keys, run/clear and their twins.

Making a task (``Choose(6, 3)``) only binds and encodes its arguments: `build_task`
runs later, when the graph is expanded with an explicit work-list, so deep graphs never
recurse on the Python stack.
"""

from __future__ import annotations

import inspect
import re
import shutil
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, overload

from typing_extensions import ParamSpec, Unpack

from . import _keys
from ._cache import paths
from ._errors import TaskDefinitionError
from ._options import CacheOptions, RunOptions, as_where, resolve_cache_dir, settings_from
from ._requires import REQS, REQUIRES_KINDS, Requirement, TaskLike
from ._sync import run_blocking

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from ._runners.base import Where
    from ._stats import RunStats

P = ParamSpec("P")
R = TypeVar("R", covariant=True)
R2 = TypeVar("R2")


@dataclass(frozen=True)
class ClassOptions:
    """Class keywords of a task class, inherited by subclasses unless given again."""

    channels: tuple[str, ...] = ()
    compress_level: int = 0
    job_prefix: Where | None = None
    retries: int = 0
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    timeout: float | None = None


def _class_options(cls: type, base: ClassOptions, given: dict[str, Any]) -> ClassOptions:
    def bad(name: str, expected: str) -> TaskDefinitionError:
        return TaskDefinitionError(f"class {cls.__qualname__}({name}={given[name]!r}): expected {expected}")

    out: dict[str, Any] = {}
    if "channel" in given:
        value = given["channel"]
        channels = [value] if isinstance(value, str) else value
        if not isinstance(channels, (list, tuple)) or not all(
            isinstance(c, str) and c
            for c in channels  # pyright: ignore[reportUnknownVariableType]
        ):
            raise bad("channel", "a channel name or a list of channel names")
        out["channels"] = tuple(channels)  # pyright: ignore[reportUnknownArgumentType]
    if "compress_level" in given:
        level = given["compress_level"]
        if type(level) is not int or not -1 <= level <= 9:
            raise bad("compress_level", "an int from 0 (no compression) to 9, or -1 (zlib default)")
        out["compress_level"] = level
    if "job_prefix" in given:
        prefix = given["job_prefix"]
        where = None if prefix is None else as_where(prefix)
        if prefix is not None and where is None:
            raise bad("job_prefix", 'a non-empty list of strings, e.g. ["srun", "-p", "gpu"], or Slurm(...)')
        out["job_prefix"] = where
    if "retries" in given:
        if type(given["retries"]) is not int or given["retries"] < 0:
            raise bad("retries", "an int >= 0")
        out["retries"] = given["retries"]
    for name in ("retry_delay", "retry_backoff"):
        if name in given:
            if type(given[name]) not in (int, float) or given[name] < 0:
                raise bad(name, "a number >= 0")
            out[name] = float(given[name])
    if "timeout" in given:
        timeout = given["timeout"]
        if timeout is not None and (type(timeout) not in (int, float) or timeout <= 0):
            raise bad("timeout", "a number of seconds > 0, or None")
        out["timeout"] = None if timeout is None else float(timeout)
    return replace(base, **out)


_REQUIRES_ANNOTATION = re.compile(r"^\s*(?:[\w.]+\.)?(Requires|RequiresList|RequiresDict)\b")


def _requirement_kind(annotation: object) -> type[Requirement] | None:
    """Return the descriptor class an annotation asks for, or None if it is not one."""
    if isinstance(annotation, str):  # `from __future__ import annotations`
        match = _REQUIRES_ANNOTATION.match(annotation)
        return REQUIRES_KINDS[match.group(1)] if match else None
    origin = getattr(annotation, "__origin__", annotation)
    if isinstance(origin, type) and issubclass(origin, Requirement):
        return origin
    return None


def _install_requirements(cls: type) -> None:
    """Turn annotated requirement attributes into descriptors of the annotated kind."""
    annotations: dict[str, object] = inspect.get_annotations(cls)
    for name, annotation in annotations.items():
        kind = _requirement_kind(annotation)
        current = cls.__dict__.get(name)
        if kind is None:
            continue
        if current is not None and not isinstance(current, Requirement):
            raise TaskDefinitionError(
                f"{cls.__qualname__}.{name} is annotated as a requirement but has the default "
                f"{current!r}; use `= Req()` or no default, and set it in build_task"
            )
        if current is None or type(current) is not kind:
            descriptor = kind()
            descriptor.__set_name__(cls, name)
            setattr(cls, name, descriptor)


class _Params:
    """The parameters of a class's `build_task`, for binding and encoding arguments fast."""

    def __init__(self, cls: type) -> None:
        self.signature = inspect.signature(cls.build_task)  # type: ignore[attr-defined]
        params = list(self.signature.parameters.values())[1:]  # drop self
        self.simple = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
        self.names = [p.name for p in params]

    def encode(self, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Return the canonical text of a call's arguments.

        Raises:
            TaskDefinitionError: the arguments do not fit `build_task`, or one has no key.
        """
        try:
            if self.simple and not kwargs and len(args) == len(self.names):
                # The common case, without binding: plain positional parameters.
                return ", ".join(map(_keys.encode, args, self.names))
            bound = self.bind(owner, args, kwargs)
            return _keys.encode_call(bound)
        except _keys.UnsupportedValueError as exc:
            bound = self.bind(owner, args, kwargs)
            raise TaskDefinitionError(_argument_message(owner, bound, exc)) from None

    def bind(
        self, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[tuple[str, object, bool]]:
        """Bind a call to `build_task`'s parameters: ``(name, value, keyword-only)`` each."""
        try:
            bound = self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TaskDefinitionError(
                f"{owner}: {exc} (the parameters of build_task{self.signature})"
            ) from None
        bound.apply_defaults()
        out: list[tuple[str, object, bool]] = []
        for name, value in list(bound.arguments.items())[1:]:
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                out.extend((f"{name}[{i}]", v, False) for i, v in enumerate(value))
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out.extend((k, value[k], True) for k in sorted(value))
            else:
                out.append((name, value, kind is inspect.Parameter.KEYWORD_ONLY))
        return out


class Task(TaskLike[R], Generic[P, R]):
    """A node of a workflow: subclass it, declare requirements, write `build_task`/`run_task`.

    Class keywords: ``channel`` (a name or a list; every class is also on the channel
    named by its `task_name`), ``compress_level`` (0-9), ``job_prefix`` (a command list),
    ``retries`` with ``retry_delay``/``retry_backoff``, and ``timeout`` (seconds).
    """

    task_name: ClassVar[str] = "asyncflow.Task"
    """``"{module}.{qualname}"``: identifies the class in the cache and names its channel."""

    _af_options: ClassVar[ClassOptions] = ClassOptions()
    _af_requires: ClassVar[tuple[str, ...]] = ()
    _af_params: ClassVar[_Params]
    _af_async: ClassVar[bool] = True
    _af_key: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _CLASS_KEYWORDS}
        if kwargs:
            raise TaskDefinitionError(
                f"class {cls.__qualname__}: unknown class keyword(s) {sorted(kwargs)}; "
                f"the keywords are {', '.join(_CLASS_KEYWORDS)}"
            )
        super().__init_subclass__()
        if "__init__" in cls.__dict__:
            raise TaskDefinitionError(
                f"class {cls.__qualname__} defines __init__; take arguments in build_task instead"
            )
        cls._af_options = _class_options(cls, cls._af_options, options)
        cls.task_name = f"{cls.__module__}.{cls.__qualname__}"
        _install_requirements(cls)
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Requirement):
                    names[name] = None
        cls._af_requires = tuple(names)
        cls._af_params = _Params(cls)
        cls._af_async = inspect.iscoroutinefunction(cls.run_task)

    def __init__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        cls = type(self)
        text = cls._af_params.encode(cls.__qualname__, args, kwargs)
        state = self.__dict__
        # Kept apart, and the keywords only if any: a tuple of plain values is not
        # tracked by the garbage collector, whose passes grow with every object it tracks.
        state["_af_args"] = args
        if kwargs:
            state["_af_kwargs"] = kwargs
        state["_af_argtext"] = text
        state["_af_key"] = f"{cls.task_name}({text})"

    def build_task(self, *args: Any, **kwargs: Any) -> None:
        """Declare requirements (assign tasks to `Requires` attributes) and keep parameters."""

    def run_task(self) -> Any:
        """Compute the result from the requirements (``async def`` or plain ``def``)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define run_task()")

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({self.__dict__['_af_argtext']})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._af_key == self._af_key

    def __hash__(self) -> int:
        return hash(self._af_key)

    def __reduce__(self) -> Any:
        # Pickle a task as its class and arguments plus its instance state, minus the
        # upstream tasks (a worker needs the resolved values, not the whole graph).
        state = {k: v for k, v in self.__dict__.items() if k != REQS}
        return (_rebuild, (type(self), state))

    @property
    def task_directory(self) -> Path:
        """A directory for the task's files: empty when the body first looks, kept until cleared."""
        state = self.__dict__
        root = state.get("_af_cache_root") or resolve_cache_dir(None)
        path = paths.task_directory(root, type(self).task_name, state["_af_argtext"])
        if state.get("_af_dir_pending"):
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            state["_af_dir_pending"] = False
        return path

    async def run(self, **options: Unpack[RunOptions]) -> R:
        """Run what is stale upstream of this task and this task, and return its result.

        Raises:
            TaskFailedError: a task failed (``on_error="cancel"``).
            WorkflowFailedError: tasks failed (``on_error="continue"``).
            GraphError: the graph could not be built; nothing ran.
        """
        result, _ = await self.run_with_stats(**options)
        return result

    async def run_with_stats(self, **options: Unpack[RunOptions]) -> tuple[R, RunStats]:
        """Like `run`, and also return per-class statistics of this run."""
        from ._scheduler import run_workflow

        return await run_workflow(self, settings_from(options))

    async def result(self, **options: Unpack[CacheOptions]) -> R:
        """Return this task's cached result without running anything.

        Raises:
            CacheError: the cache holds no result for this task.
        """
        from ._cache.store import load_result

        return await load_result(resolve_cache_dir(options.get("cache_dir")), self)

    async def clear(self, **options: Unpack[CacheOptions]) -> bool:
        """Remove this task's cached result and directory; its dependents become stale.

        Returns:
            Whether there was a result to remove.
        """
        from ._cache.store import clear_nodes

        removed = await clear_nodes(resolve_cache_dir(options.get("cache_dir")), [self])
        return removed > 0

    @classmethod
    async def clear_all(cls, **options: Unpack[CacheOptions]) -> int:
        """Remove the cached results of every task of this class.

        Returns:
            How many results were removed.
        """
        from ._cache.store import clear_class

        return await clear_class(resolve_cache_dir(options.get("cache_dir")), cls.task_name)

    def run_graph(self, **options: Unpack[RunOptions]) -> R:
        """Blocking twin of `run`, for scripts."""
        return run_blocking(partial(self.run, **options), api="run_graph()", instead="await task.run()")

    def run_graph_with_stats(self, **options: Unpack[RunOptions]) -> tuple[R, RunStats]:
        """Blocking twin of `run_with_stats`, for scripts."""
        return run_blocking(
            partial(self.run_with_stats, **options),
            api="run_graph_with_stats()",
            instead="await task.run_with_stats()",
        )

    def get_task_result(self, **options: Unpack[CacheOptions]) -> R:
        """Blocking twin of `result`."""
        return run_blocking(
            partial(self.result, **options), api="get_task_result()", instead="await task.result()"
        )

    def clear_task(self, **options: Unpack[CacheOptions]) -> bool:
        """Blocking twin of `clear`."""
        return run_blocking(partial(self.clear, **options), api="clear_task()", instead="await task.clear()")

    @classmethod
    def clear_all_tasks(cls, **options: Unpack[CacheOptions]) -> int:
        """Blocking twin of `clear_all`."""
        return run_blocking(
            partial(cls.clear_all, **options), api="clear_all_tasks()", instead="await Cls.clear_all()"
        )


_CLASS_KEYWORDS = (
    "channel",
    "compress_level",
    "job_prefix",
    "retries",
    "retry_delay",
    "retry_backoff",
    "timeout",
)


def _rebuild(cls: type[Task[Any, Any]], state: dict[str, Any]) -> Task[Any, Any]:
    task = cls.__new__(cls)
    task.__dict__.update(state)
    return task


def _argument_message(
    label: str, bound: list[tuple[str, object, bool]], exc: _keys.UnsupportedValueError
) -> str:
    param = re.split(r"[\[ ]", exc.path, maxsplit=1)[0]
    where = f"argument {param!r} is" if exc.path == param else f"argument {param!r} holds, at {exc.path},"
    shown = ", ".join("..." if n == param else _safe_repr(v) for n, v, _ in bound)
    return (
        f"{label}({shown}): {where} {_keys.a_type(exc.value)}, which cannot be part of a "
        f"cache key; pass {_keys.ACCEPTED}"
    )


def _safe_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class SourceTask(Task[[], R]):
    """A task with no parameters and no requirements: a source of data."""

    def build_task(self) -> None:
        """Nothing to declare."""


class SinkTask(Task[P, None]):
    """A task that only gathers requirements; its body does nothing and returns None."""

    async def run_task(self) -> None:
        """Do nothing: reaching this task means every requirement is done."""


class _AsyncDefinition(Protocol[P, R]):
    def build_task(self, *args: P.args, **kwargs: P.kwargs) -> None: ...
    def run_task(self) -> Awaitable[R]: ...


class _SyncDefinition(Protocol[P, R]):
    def build_task(self, *args: P.args, **kwargs: P.kwargs) -> None: ...
    def run_task(self) -> R: ...


@overload
def infer_task_type(cls: type[_AsyncDefinition[P, R2]]) -> type[Task[P, R2]]: ...
@overload
def infer_task_type(cls: type[_SyncDefinition[P, R2]]) -> type[Task[P, R2]]: ...
def infer_task_type(cls: type[Any]) -> type[Task[Any, Any]]:
    """Let a type checker see a task class as ``Task[[params...], result]``.

    ``infer_task_type(Choose)`` is `Choose` at run time; statically it has the type
    ``type[Task[[int, int], int]]``, so ``await Choose(6, 3).run()`` is an ``int``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Task)):  # pyright: ignore[reportUnnecessaryIsInstance]  # users pass anything
        raise TaskDefinitionError(f"infer_task_type expects a Task subclass, got {cls!r}")
    return cls  # pyright: ignore[reportUnknownVariableType]  # any Task subclass
