"""Taskfiles: a Python file of task classes, imported by path, and the tasks the CLI picks in it.

A taskfile is imported under a name that is the same on every run of the same file (the
name is part of every task's `task_name`, and so of its cache keys), and its classes
travel by value to worker processes and job prefixes, which cannot import it by path.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import AsyncflowError, UsageError
from ._task import Task

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

log = logging.getLogger("asyncflow")


def _module_name(path: Path) -> str:
    """Name the taskfile's module: its stem, unless that would shadow another module.

    The name is part of every task's `task_name` and so of its cache keys: it must be the
    same on every run of the same file, hence a hash of the path rather than a counter.
    """
    stem = path.stem
    found = importlib.machinery.PathFinder.find_spec(stem, sys.path) if stem.isidentifier() else None
    taken = (
        not stem.isidentifier()
        or stem in sys.modules
        or (found is not None and found.origin != str(path))  # the taskfile itself may be on the path
    )
    if not taken:
        return stem
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() else "_" for c in stem)
    return f"_asyncflow_taskfile_{safe}_{digest}"


def load_taskfile(file: str) -> ModuleType:
    """Import a taskfile by path, registered in `sys.modules` under a stable unique name.

    Raises:
        UsageError: the file is missing or raised while being imported.
    """
    path = Path(file).absolute()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UsageError(f"taskfile {file} {what}; give the path of a Python file defining a Main task")
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"taskfile {file} cannot be imported as Python (name it *.py)")
    module = importlib.util.module_from_spec(spec)
    # Like `python FILE`: modules next to the taskfile can be imported from it.
    sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        log.error("loading taskfile %s failed", file, exc_info=exc)
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        raise UsageError(f"taskfile {file} raised while being imported: {last}") from exc
    from ._cache import blobs  # cloudpickle: only once a taskfile is loaded

    # Worker processes cannot import a file loaded by path: send its classes by value.
    blobs.register_by_value(module)
    return module


def task_classes(module: ModuleType) -> dict[str, type[Task[Any, Any]]]:
    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, Task) and value.__module__ == module.__name__
    }


def entrypoint(
    module: ModuleType, file: str, name: str, arguments: Mapping[str, Any] | None = None
) -> Task[Any, Any]:
    """Return ``NAME(**arguments)`` from the taskfile: a Task subclass, by default called without arguments.

    Raises:
        UsageError: no such name, not a task class, or it needs other arguments.
    """
    cls = entry_class(module, file, name)
    try:
        return cls(**(arguments or {}))
    except AsyncflowError as exc:
        first = str(exc).splitlines()[0]
        if arguments:
            raise UsageError(f"entrypoint {name}: {first}") from exc
        raise UsageError(
            f"entrypoint {name} takes arguments, but {first}; give them after the taskfile "
            f"(`asyncflow run {file} --help` lists them), or run a task without parameters that requires it"
        ) from exc


def entry_class(module: ModuleType, file: str, name: str) -> type[Task[Any, Any]]:
    """Return the taskfile's task class `name`.

    Raises:
        UsageError: no such name, or not a task class.
    """
    value: object = getattr(module, name, None)
    classes = ", ".join(sorted(task_classes(module))) or "none"
    if value is None:
        raise UsageError(
            f"taskfile {file} has no task {name!r} (its task classes: {classes}); "
            f"define class {name}(Task) or pick one with -e NAME"
        )
    shown = f"{type(value).__name__} {value!r}"
    if not (isinstance(value, type) and issubclass(value, Task)):
        raise UsageError(f"{name} in {file} is {shown}, not a Task subclass (its task classes: {classes})")
    cls: type[Task[Any, Any]] = value  # pyright: ignore[reportUnknownVariableType]  # any Task subclass
    return cls


def task_of(module: ModuleType, taskfile: str, written: str) -> Task[Any, Any]:
    """Return the task `written` as in Python (``Square(3)``), made with the taskfile's names.

    A task's key (``pipeline.Square(3)``, as the history and the web view show it) is
    taken too, when it names a class of the taskfile and its arguments read as Python.

    Raises:
        UsageError: it is not a task, or making it failed.
    """
    expression = written
    for cls in task_classes(module).values():
        if written.startswith(cls.task_name + "(") and written.endswith(")"):
            expression = cls.__qualname__ + written[len(cls.task_name) :]  # a key: the class as named here
    try:
        value = eval(expression, vars(module))  # the user's own expression, as a Python prompt would take it
    except Exception as exc:
        raise UsageError(f"{written!r} in {taskfile}: {type(exc).__name__}: {exc}; write a task as in "
                         "Python, e.g. 'Square(3)'") from exc  # fmt: skip
    if not isinstance(value, Task):
        raise UsageError(f"{written!r} in {taskfile} is {type(value).__name__} {value!r}, not a task; write "
                         "one as in Python, e.g. 'Square(3)'")  # fmt: skip
    task: Task[Any, Any] = value  # pyright: ignore[reportUnknownVariableType]  # any task
    if expression != written and task.__af_key__ != written:
        raise UsageError(f"{written!r} in {taskfile} reads as {task!r}, whose key is {task.__af_key__!r}; "
                         "write the task as in Python, e.g. 'Square(3)'")  # fmt: skip
    return task


def class_name(module: ModuleType, taskfile: str, name: str) -> str:
    """A class of the taskfile by name, or any class by its `task_name`, as a `task_name`."""
    value = getattr(module, name, None)
    if isinstance(value, type) and issubclass(value, Task):
        return value.task_name
    if "." in name:
        return name
    classes = ", ".join(sorted(task_classes(module))) or "none"
    raise UsageError(
        f"--all-of {name}: taskfile {taskfile} has no task class {name!r} (its task classes: {classes}); "
        "give a class of the taskfile, or a task_name such as mypackage.module.Class"
    )
