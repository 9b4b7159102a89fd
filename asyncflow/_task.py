"""`Task` and its kin: class keywords, canonical node keys, run/clear and their twins.

Making a task (``Choose(6, 3)``) only binds and encodes its arguments: `build_task`
runs later, when the graph is expanded with an explicit work-list, so deep graphs never
recurse on the Python stack.
"""

from __future__ import annotations

import gc
import re
from functools import partial

# ParamSpec is typing's own since 3.10: typing_extensions would cost `import asyncflow` its import.
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, Protocol, TypeVar, overload

from . import _keys
from ._errors import TaskDefinitionError
from ._file import MARK as FILE_MARK
from ._file import File, files_in
from ._options import (
    CLASS_KEYWORDS,
    CacheOptions,
    ClassOptions,
    RunOptions,
    class_options,
    resolve_cache_dir,
    settings_from,
)
from ._requires import REQUIRES_KINDS, Requirement, TaskLike, clear_values, set_values, without_requirements
from ._sync import BODY, run_blocking

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from pathlib import Path

    from typing_extensions import Unpack

    from ._stats import RunStats

P = ParamSpec("P")
R = TypeVar("R", covariant=True)
R2 = TypeVar("R2")


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
    # The class's own (Python >= 3.10 never hands a base's here), as inspect.get_annotations
    # reads them, without importing inspect for every module of tasks a worker imports.
    annotations: dict[str, object] = cls.__annotations__
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

    def __init__(self, cls: type[Task[Any, Any]]) -> None:
        import inspect

        self.cls = cls
        # Without a build_task of its own (Task's takes anything), a class takes no arguments.
        self.undefined = cls.build_task is vars(Task)["build_task"]
        self.signature = inspect.signature(_no_build_task if self.undefined else cls.build_task)
        params = list(self.signature.parameters.values())[1:]  # drop self
        self.simple = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
        self.names = [p.name for p in params]
        self.single = self.simple and len(self.names) == 1

    def encode(self, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Return the canonical text of a call's arguments.

        Raises:
            TaskDefinitionError: the arguments do not fit `build_task`, or one has no key.
        """
        try:
            if self.single and len(args) == 1 and not kwargs:
                # The most common case of all, a single parameter: no map, no join.
                return _keys.encode(args[0], self.names[0])
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
        if self.undefined:  # and given arguments: the fast path in `encode` took the others
            raise TaskDefinitionError(_no_build_task_message(self.cls, args, kwargs))
        try:
            bound = self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TaskDefinitionError(
                f"{owner}: {exc} (the parameters of build_task{self.signature})"
            ) from None
        bound.apply_defaults()
        out: list[tuple[str, object, bool]] = []
        for name, value in list(bound.arguments.items())[1:]:
            param = self.signature.parameters[name]
            if param.kind is param.VAR_POSITIONAL:
                out.extend((f"{name}[{i}]", v, False) for i, v in enumerate(value))
            elif param.kind is param.VAR_KEYWORD:
                out.extend((k, value[k], True) for k in sorted(value))
            else:
                out.append((name, value, param.kind is param.KEYWORD_ONLY))
        return out


class _ParamsOnFirstUse:
    """A class's `_Params` until its first task is made, which puts the real ones in its place.

    Not read when the class is defined: a job's worker imports the modules of tasks but only
    unpickles tasks, and so never pays for inspect's import and the signature.
    """

    __slots__ = ("cls",)

    def __init__(self, cls: type[Task[Any, Any]]) -> None:
        self.cls = cls

    def encode(self, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Read the parameters, keep them on the class, and encode with them (see `_Params.encode`)."""
        params = _Params(self.cls)
        self.cls._af_params = params  # pyright: ignore[reportPrivateUsage]  # Task's, put in place for it
        return params.encode(owner, args, kwargs)


def _no_build_task(self: object) -> None:
    """The parameters of a class that defines no build_task: none."""


def _no_build_task_message(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    name = cls.__qualname__
    shown = ", ".join([*map(_safe_repr, args), *(f"{k}={_safe_repr(v)}" for k, v in kwargs.items())])
    message = f"{name}({shown}): class {name} defines no build_task, so it takes no arguments"
    misspelled = _misspelled_build_task(cls)
    if misspelled is None:
        return message + "; define build_task(self, ...) to take them"
    return message + f"; is its method {misspelled} a misspelled build_task? Rename it build_task"


def _misspelled_build_task(cls: type) -> str | None:
    """Return a method of `cls` (name and parameters) whose name looks like ``build_task``."""
    import inspect

    for klass in cls.__mro__:
        if klass.__module__ == __name__:  # Task, SourceTask, SinkTask: ours, not the user's
            break
        for name, value in vars(klass).items():
            if inspect.isfunction(value) and not name.startswith("__") and _looks_like_build_task(name):
                signature = inspect.signature(value)
                bare = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
                return f"{name}{signature.replace(parameters=bare, return_annotation=signature.empty)}"
    return None


def _looks_like_build_task(name: str) -> bool:
    """Tell whether `name` could be build_task mistyped: build, buildtask, bulid_task, ..."""
    import difflib  # only to word an error

    flat = name.lower().replace("_", "")
    return (
        "build" in flat
        or difflib.SequenceMatcher(None, flat, "buildtask").ratio() >= 0.75
        or difflib.SequenceMatcher(None, flat, "build").ratio() >= 0.8
    )


class Task(TaskLike[R], Generic[P, R]):
    """A node of a workflow: subclass it, declare requirements, write `build_task`/`run_task`.

    Class keywords: ``channel`` (a name or a list; every class is also on the channel
    named by its `task_name`), ``compress_level`` (0-9), ``job_prefix`` (a command list),
    ``retries`` with ``retry_delay``/``retry_backoff``, and ``timeout`` (seconds).
    """

    task_name: ClassVar[str] = "asyncflow.Task"
    """``"{module}.{qualname}"``: identifies the class in the cache and names its channel."""

    # asyncflow's protocol with the layers below, which know a task only by duck typing.
    # Dunder names, as attrs and pydantic use on their users' classes: they cannot clash
    # with the attributes a build_task sets. The rest of a task's state lives in its
    # instance dict under `_af_*` keys that only this module reads and writes.
    __af_options__: ClassVar[ClassOptions] = ClassOptions()
    """The class keywords, validated (inherited unless given again)."""
    __af_requires__: ClassVar[tuple[str, ...]] = ()
    """The names of the class's requirement attributes, in declaration order."""
    __af_key__: str
    """The node's cache key: ``"{task_name}({canonical arguments})"``."""
    _af_params: ClassVar[_Params | _ParamsOnFirstUse]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in CLASS_KEYWORDS}
        if kwargs:
            raise TaskDefinitionError(
                f"class {cls.__qualname__}: unknown class keyword(s) {sorted(kwargs)}; "
                f"the keywords are {', '.join(CLASS_KEYWORDS)}"
            )
        super().__init_subclass__()
        if "__init__" in cls.__dict__:
            raise TaskDefinitionError(
                f"class {cls.__qualname__} defines __init__; take arguments in build_task instead"
            )
        cls.__af_options__ = class_options(cls.__qualname__, cls.__af_options__, options)
        cls.task_name = f"{cls.__module__}.{cls.__qualname__}"
        _install_requirements(cls)
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Requirement):
                    names[name] = None
        cls.__af_requires__ = tuple(names)
        cls._af_params = _ParamsOnFirstUse(cls)

    def __init__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        cls = type(self)
        text = cls._af_params.encode(cls.__qualname__, args, kwargs)
        # Set as attributes, not through `self.__dict__`, every key from the start (the
        # flag too), in the same order for every instance: CPython then keeps the values
        # in a compact array whose keys all instances of the class share, ~160 bytes less
        # per task than a dict of its own (a million-node graph holds a million tasks).
        # Kept apart, the keywords None unless any: a tuple of plain values is not tracked
        # by the garbage collector, whose passes grow with every object it tracks.
        # Read back as attributes too, never through `self.__dict__`, which would make that
        # dict after all (`__af_undeclared__` looks at the values without it).
        self._af_args = args
        self._af_kwargs: dict[str, Any] | None = kwargs or None
        self.__af_key__ = _keys.node_key(cls.task_name, text)
        self._af_built = False
        self._af_reqs: dict[str, Any] | None = (
            None  # what build_task assigns to requirements (`_requires._REQS`)
        )
        # What an attempt of the body sets (`__af_enter__`; `_af_values` is `_requires._VALUES`),
        # declared now too: a key added later would turn the task's state into a dict of its own.
        self._af_values = None
        # A str, not a Path: a job's worker unpickles the task, and a Path would have it
        # import pathlib (milliseconds of every job) before its body runs.
        self._af_cache_root: str | None = None
        self._af_dir_pending = False
        if FILE_MARK in text:  # rarely: then find the input files among the arguments
            files = files_in((*args, *kwargs.values()))
            if files:
                self._af_files = tuple(files)

    def build_task(self, *args: Any, **kwargs: Any) -> None:
        """Declare requirements (assign tasks to `Requires` attributes) and keep parameters."""

    def run_task(self) -> Any:
        """Compute the result from the requirements (``async def`` or plain ``def``)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define run_task()")

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({_keys.split_key(self.__af_key__)[1]})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__af_key__ == self.__af_key__

    def __hash__(self) -> int:
        return hash(self.__af_key__)

    def __reduce__(self) -> Any:
        # Pickle a task as its class and arguments plus its instance state, minus the
        # upstream tasks (a worker needs the resolved values, not the whole graph).
        return (_rebuild, (type(self), without_requirements(self.__dict__)))

    def __af_files__(self) -> tuple[File, ...]:
        """Return the input files among the task's arguments (see `File`)."""
        return getattr(self, "_af_files", ())

    def __af_build__(self) -> None:
        """Run `build_task` with the task's arguments, the first time only; raise what it raises."""
        if not self._af_built:
            self.build_task(*self._af_args, **(self._af_kwargs or _NO_KEYWORDS))
            self._af_built = True

    def __af_undeclared__(self) -> tuple[str, str, str] | None:
        """Find an attribute holding task-likes that is not a declared requirement.

        Looks at the attributes once built, and one level into lists, tuples, sets and
        dict values (never deeper: this runs for every node of graphs of 100,000).

        Returns:
            ``(attribute, what it holds, the declaration to write)``, or None.
        """
        # First the values alone, as the garbage collector sees them: CPython lists an
        # object's attribute values (or its dict, once made) without making a dict of the
        # compact array `__init__` keeps them in; `self.__dict__` would make one per task.
        # Only a value that might hold a task-like sends us to the names, through the dict.
        # Ours are skipped by identity: the requirements (declared), the arguments (not
        # attributes; calling build_task with them makes new tuples and dicts for it).
        reqs, args, kwargs = self._af_reqs, self._af_args, self._af_kwargs
        referents: list[object] = gc.get_referents(self)  # the values, the class and nothing else
        for value in referents:
            kind = type(value)
            if kind in _HARMLESS or value is reqs or value is args or value is kwargs:
                continue
            if kind is dict or _holds_task_like(value, kind):  # a dict: maybe the instance dict
                return self._undeclared_by_name()
        return None

    def _undeclared_by_name(self) -> tuple[str, str, str] | None:
        """`__af_undeclared__` by the instance dict's names: the attribute, and what it holds."""
        state: dict[str, object] = self.__dict__
        for name, value in state.items():
            kind = type(value)
            # `_af_*` entries are ours (`_af_args` holds tasks passed as arguments).
            if kind in _PLAIN or name.startswith(_OWN):
                continue
            container = _CONTAINERS.get(kind)
            if container is None:
                if isinstance(value, TaskLike):
                    return name, f"{value!r}", f"{name}: Requires[...]"
                continue
            elements, declaration = container
            for item in elements(value):
                if isinstance(item, TaskLike):
                    return name, f"{_keys.a_type(value)} containing {item!r}", f"{name}: {declaration}"
        return None

    def __af_enter__(self, values: dict[str, Any], cache_dir: Path) -> None:
        """Prepare an attempt of the body: requirements read as `values`, a fresh `task_directory`."""
        set_values(self, values)
        self._af_cache_root = str(cache_dir)
        self._af_dir_pending = True  # emptied when the body first asks for it

    def __af_leave__(self) -> None:
        """End the body's attempts: forget the values it read (they may be large)."""
        clear_values(self)
        self._af_dir_pending = False

    @property
    def task_directory(self) -> Path:
        """A directory for the task's files: empty when the body first looks, kept until cleared."""
        import shutil
        from pathlib import Path

        from ._cache import paths

        # getattr: a task unpickled in a worker has only the state it was sent with.
        root: str | None = getattr(self, "_af_cache_root", None)
        path = paths.task_directory(Path(root) if root else resolve_cache_dir(None), self.__af_key__)
        if getattr(self, "_af_dir_pending", False):
            if path.exists():
                shutil.rmtree(path)
            paths.make_dirs(path.parent)  # asyncflow's data/ and its class's: never writable by others
            path.mkdir()
            self._af_dir_pending = False
        return path

    async def run(self, **options: Unpack[RunOptions]) -> R:
        """Run what is stale upstream of this task and this task, and return its result.

        Raises:
            TaskFailedError: a task failed (``on_error="cancel"``).
            WorkflowFailedError: tasks failed (``on_error="continue"``).
            GraphError: the graph could not be built; nothing ran.
        """
        result, _ = await self.__af_run__(options)
        return result

    async def run_with_stats(self, **options: Unpack[RunOptions]) -> tuple[R, RunStats]:
        """Like `run`, and also return per-class statistics of this run.

        Inside a body, it joins the body's run (see `gather`); the statistics are that run's so far.
        """
        result, stats = await self.__af_run__(options)
        return result, stats()

    async def __af_run__(self, options: RunOptions) -> tuple[R, Callable[[], RunStats]]:
        """Run this task, or join the body's run inside a body; return its result and what makes the stats."""
        from ._mainguard import refuse_reimported_script
        from ._scheduler import join_body, run_workflow

        body = BODY.get()
        if body is not None:
            (value,), stats = await join_body(body, [self], dict(options))
            return value, stats
        refuse_reimported_script()
        return await run_workflow(self, settings_from(options))

    async def result(self, **options: Unpack[CacheOptions]) -> R:
        """Return this task's cached result without running anything.

        Raises:
            CacheError: the cache holds no result for this task.
        """
        from ._cache.store import load_result

        return await load_result(resolve_cache_dir(options.get("cache_dir")), self.__af_key__, repr(self))

    async def clear(self, **options: Unpack[CacheOptions]) -> bool:
        """Remove this task's cached result and directory; its dependents become stale.

        Returns:
            Whether there was a result to remove.
        """
        from ._cache.store import clear_nodes

        removed = await clear_nodes(resolve_cache_dir(options.get("cache_dir")), [self.__af_key__])
        return bool(removed)

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


_NO_KEYWORDS: dict[str, Any] = {}
_OWN = ("_af_", "__af_")  # this module's keys in a task's instance dict
_PLAIN = frozenset({int, float, str, bool, type(None)})
_HARMLESS = _PLAIN | {type}  # among an instance's referents: plain values, and its class
# The containers an undeclared attribute is looked into (one level): their elements, and
# the requirement to declare instead (a set has no order: a requirement keeps one).
_CONTAINERS: dict[type, tuple[Callable[[Any], Iterable[object]], str]] = {
    list: (iter, "RequiresList[...]"),
    tuple: (iter, "RequiresList[...]"),
    set: (iter, "RequiresList[...], assigned a list"),
    frozenset: (iter, "RequiresList[...], assigned a list"),
    dict: (lambda d: d.values(), "RequiresDict[...]"),
}


def _holds_task_like(value: object, kind: type) -> bool:
    """Tell whether `value` is a task-like, or a container (`_CONTAINERS`) holding one at its first level."""
    container = _CONTAINERS.get(kind)
    if container is None:
        return isinstance(value, TaskLike)
    return any(isinstance(item, TaskLike) for item in container[0](value))


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


async def gather(*tasks: Task[Any, R], **options: Unpack[RunOptions]) -> list[R]:
    """Run `tasks` concurrently and return their results, in order.

    Inside a body (an ``async def run_task``, or a plain one in a thread through
    `gather_tasks`), they join the body's run: its cache, limits, workers, single flight,
    retries, cancellation and progress; the body's slots of limited channels are lent
    to them while it waits. Elsewhere they run as one run each, side by side (nodes they
    share are computed once).

    Raises:
        TaskFailedError: one of them failed.
        OptionError: inside a body, `options` differ from its run's.
    """
    from ._scheduler import join_body

    body = BODY.get()
    if body is not None:
        values, _ = await join_body(body, list(tasks), dict(options))
        return values
    import anyio

    results: list[Any] = [None] * len(tasks)

    async def one(i: int, task: Task[Any, R]) -> None:
        results[i] = await task.run(**options)

    async with anyio.create_task_group() as tg:
        for i, task in enumerate(tasks):
            tg.start_soon(one, i, task)
    return results


def gather_tasks(*tasks: Task[Any, R], **options: Unpack[RunOptions]) -> list[R]:
    """Blocking twin of `gather`, for plain ``def`` bodies (and scripts)."""

    async def gathered() -> list[R]:
        return await gather(*tasks, **options)

    return run_blocking(gathered, api="gather_tasks()", instead="await asyncflow.gather(...)")
