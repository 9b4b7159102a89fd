"""asyncflow: an async-native workflow engine with a durable cache.

Define tasks as classes (`build_task` declares upstream tasks, `run_task` computes),
then ``await task.run()`` in any event loop (asyncio or trio) runs only what is stale.
"""

from typing import TYPE_CHECKING

# Absolute, unlike the rest: pyright takes a relative `from ._keys import` as declaring
# `_keys` here, and then flags `from . import _keys` in _task and _requires as private use.
from asyncflow._keys import register_key as register_key

from ._errors import AsyncflowError as AsyncflowError
from ._errors import BuildError as BuildError
from ._errors import CacheError as CacheError
from ._errors import CacheWarning as CacheWarning
from ._errors import CycleError as CycleError
from ._errors import EventLoopRunningError as EventLoopRunningError
from ._errors import GraphError as GraphError
from ._errors import HostError as HostError
from ._errors import InputFileError as InputFileError
from ._errors import MissingRequirementError as MissingRequirementError
from ._errors import OptionError as OptionError
from ._errors import TaskDefinitionError as TaskDefinitionError
from ._errors import TaskFailedError as TaskFailedError
from ._errors import UndeclaredRequirementError as UndeclaredRequirementError
from ._errors import UnreadableResultError as UnreadableResultError
from ._errors import WorkflowFailedError as WorkflowFailedError
from ._file import File as File
from ._options import CacheOptions as CacheOptions
from ._options import RunOptions as RunOptions
from ._requires import Const as Const
from ._requires import Req as Req
from ._requires import Requires as Requires
from ._requires import RequiresDict as RequiresDict
from ._requires import RequiresList as RequiresList
from ._requires import TaskItem as TaskItem
from ._requires import TaskLike as TaskLike
from ._task import SinkTask as SinkTask
from ._task import SourceTask as SourceTask
from ._task import Task as Task
from ._task import gather as gather
from ._task import gather_tasks as gather_tasks
from ._task import infer_task_type as infer_task_type

if TYPE_CHECKING:
    from ._placements import Dask as Dask
    from ._placements import Host as Host
    from ._placements import Ray as Ray
    from ._placements import Slurm as Slurm
    from ._stats import ClassStats as ClassStats
    from ._stats import RunStats as RunStats

__all__ = [
    "AsyncflowError",
    "BuildError",
    "CacheError",
    "CacheOptions",
    "CacheWarning",
    "ClassStats",
    "Const",
    "CycleError",
    "Dask",
    "EventLoopRunningError",
    "File",
    "GraphError",
    "Host",
    "HostError",
    "InputFileError",
    "MissingRequirementError",
    "OptionError",
    "Ray",
    "Req",
    "Requires",
    "RequiresDict",
    "RequiresList",
    "RunOptions",
    "RunStats",
    "SinkTask",
    "Slurm",
    "SourceTask",
    "Task",
    "TaskDefinitionError",
    "TaskFailedError",
    "TaskItem",
    "TaskLike",
    "UndeclaredRequirementError",
    "UnreadableResultError",
    "WorkflowFailedError",
    "gather",
    "gather_tasks",
    "infer_task_type",
    "register_key",
]

__version__ = "0.1.0"

# Public names whose modules `import asyncflow` leaves alone (a command's help and a job's
# worker never need them), each imported when first asked for (PEP 562). Type checkers
# see them among the imports above, and not this hook, so a misspelt name stays an error.
_LAZY = {
    "ClassStats": "._stats",
    "Dask": "._placements",
    "Host": "._placements",
    "Ray": "._placements",
    "RunStats": "._stats",
    "Slurm": "._placements",
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # the next lookup finds it without this hook
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


def _show_errors_as_public() -> None:
    """Show the exceptions where users import them from, as anyio's and httpx's do.

    Tracebacks then say `asyncflow.TaskFailedError`, not `asyncflow._errors.TaskFailedError`.
    Only exceptions: typing.get_type_hints resolves a class's annotations in the module its
    __module__ names, so a rewritten Task would break it for every user's subclass.
    """
    for name in __all__:
        value = globals().get(name)  # the names in _LAZY are no exceptions
        if isinstance(value, type) and issubclass(value, BaseException):
            value.__module__ = __name__


_show_errors_as_public()
del _show_errors_as_public, TYPE_CHECKING
