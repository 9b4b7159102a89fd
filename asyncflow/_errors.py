"""Every exception asyncflow raises, in one hierarchy.

```
AsyncflowError
├── TaskDefinitionError (also TypeError)    bad class keyword, unsupported argument type,
│                                           iterating a task, arguments without build_task
├── OptionError (also ValueError)           unknown run option, bad value, bad Slurm/Host
├── GraphError                              CycleError, MissingRequirementError, BuildError,
│                                           UndeclaredRequirementError, InputFileError
├── TaskFailedError                         .task, .command, .returncode, .stderr_tail
├── WorkflowFailedError (ExceptionGroup)    every failure under on_error="continue"
├── CacheError                              unreadable, damaged, newer or full cache (.lost)
│   └── UnreadableResultError               one cached result cannot be read back
├── HostError (also OSError)                unreachable, auth, host key, no remote python
├── EventLoopRunningError (also RuntimeError)  a blocking twin inside a running loop
└── GraphvizError                           a graph image that Graphviz cannot write
```

Facts are attributes, so callers never parse messages; the first line of each
message stands alone. Every error pickles, facts included: a workflow may run inside a
process pool's job, and a body's error crosses from a worker process. `UsageError` is
the command line's own (exit status 2), `UnstorableResultError` the runners' word to the
scheduler, and `WorkerTracebackError` a traceback from another process; none of them is
asyncflow's API.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import ExceptionGroup


class AsyncflowError(Exception):
    """Base class of every error asyncflow raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle's default calls cls(*args), which lacks the keyword-only facts most
        # subclasses require: rebuild without __init__ instead. (__cause__ and the
        # traceback are lost, as with any pickled exception.)
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[AsyncflowError], args: tuple[Any, ...], state: dict[str, Any]) -> AsyncflowError:
    """Make an error again from its class, arguments and attributes (see `__reduce__`)."""
    error = cls.__new__(cls, *args)
    error.args = args  # OSError.__new__ leaves them to the __init__ skipped here
    error.__dict__.update(state)
    return error


class TaskDefinitionError(AsyncflowError, TypeError):
    """A task class or a task's arguments are not usable (found when the task is made)."""


class OptionError(AsyncflowError, ValueError):
    """A run option has an unknown name or a value outside its accepted set."""


class GraphError(AsyncflowError):
    """The task graph cannot be built; nothing has run."""


class BuildError(GraphError):
    """A task's `build_task` raised; the original exception is the `__cause__`."""

    def __init__(self, message: str, *, task: str) -> None:
        super().__init__(message)
        self.task = task


class MissingRequirementError(GraphError):
    """A requirement declared on a task class was left unset by `build_task`."""

    def __init__(self, message: str, *, task: str, attribute: str) -> None:
        super().__init__(message)
        self.task = task
        self.attribute = attribute


class UndeclaredRequirementError(GraphError):
    """A task keeps tasks in an attribute that is not a declared requirement: no dependency."""

    def __init__(self, message: str, *, task: str, attribute: str) -> None:
        super().__init__(message)
        self.task = task
        self.attribute = attribute


class CycleError(GraphError):
    """Tasks require each other in a cycle; `cycle` lists them in order."""

    def __init__(self, message: str, *, cycle: Sequence[str]) -> None:
        super().__init__(message)
        self.cycle: tuple[str, ...] = tuple(cycle)


class InputFileError(GraphError):
    """An input file (`File`) of a task is missing or cannot be read; nothing has run.

    Attributes:
        task: the first task (as the user writes it) that reads it.
        path: the file's absolute path.
    """

    def __init__(self, message: str, *, task: str, path: str) -> None:
        super().__init__(message)
        self.task = task
        self.path = path


class TaskFailedError(AsyncflowError):
    """A task's body failed; the original exception is the `__cause__`.

    Attributes:
        task: the node as the user writes it, e.g. ``Choose(6, 3)``.
        command: the command line, when the body ran in a subprocess.
        returncode: the exit status of that subprocess.
        stderr_tail: the last lines it wrote to stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        task: str,
        command: Sequence[str] | None = None,
        returncode: int | None = None,
        stderr_tail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.task = task
        self.command: tuple[str, ...] | None = None if command is None else tuple(command)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class WorkflowFailedError(AsyncflowError, ExceptionGroup[TaskFailedError]):
    """Several tasks failed under ``on_error="continue"``; `exceptions` holds each."""

    def __new__(cls, message: str, errors: Sequence[TaskFailedError]) -> WorkflowFailedError:
        return super().__new__(cls, message, errors)

    def __init__(self, message: str, errors: Sequence[TaskFailedError]) -> None:
        super().__init__(message, errors)

    def derive(self, excs: Sequence[TaskFailedError]) -> WorkflowFailedError:  # type: ignore[override]
        return WorkflowFailedError(self.message, excs)


class CacheError(AsyncflowError):
    """The cache cannot be used as it is (unreadable, written by a newer asyncflow, full, ...).

    Attributes:
        lost: the keys of the nodes whose results could not be written (e.g. the disk
            is full); they run again next time. Empty for other errors.
    """

    def __init__(self, message: str, *, lost: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.lost: tuple[str, ...] = tuple(lost)


class UnreadableResultError(CacheError):
    """A cached result cannot be read back: its file is missing, its bytes do not match
    their digest, or it does not unpickle here (its class was renamed or removed since).

    Inside a run this is never raised: the entry is stale, and is computed again with a
    `CacheWarning`. `Task.result()` raises it; ``await task.run()`` computes it again.

    Attributes:
        task: the node (as the user writes it, or its key).
        reason: why it cannot be read, e.g. ``"its result file ab/ab12 is missing"``.
    """

    def __init__(self, message: str, *, task: str, reason: str) -> None:
        super().__init__(message)
        self.task = task
        self.reason = reason


class CacheWarning(UserWarning):
    """The cache held something unusable (a damaged or unreadable result); asyncflow recovered."""


class HostError(AsyncflowError, OSError):
    """A remote host cannot be used (unreachable, refused authentication, ...).

    Attributes:
        host: the host as a URL, e.g. ``ssh://root@127.0.0.1:2222``.
        reason: what failed, one of ``"host-key"`` (not in known_hosts, or changed),
            ``"refused"`` (nothing listens on the port), ``"unreachable"`` (no route,
            timeout, unknown name, connection lost), ``"auth"`` (key refused or
            unreadable), ``"python"`` (no remote interpreter, or no asyncflow for it),
            ``"workdir"`` (no SFTP, or no job directory), ``"sessions"`` (the server
            allows a single session per connection).
    """

    def __init__(self, message: str, *, host: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.reason = reason


class EventLoopRunningError(AsyncflowError, RuntimeError):
    """A blocking twin (`run_graph`, ...) was called where an event loop already runs."""


class GraphvizError(AsyncflowError):
    """A graph image could not be written with Graphviz.

    Attributes:
        reason: ``"missing"`` (no ``dot`` program), ``"format"`` (the file name's suffix
            is not ``.svg``, ``.png`` or ``.pdf``) or ``"failed"`` (``dot`` exited with an error).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnstorableResultError(AsyncflowError):
    """A body returned a value the cache cannot store; the scheduler reports a `TaskFailedError`.

    Raised where the body ran, perhaps in another process, and never retried: the body
    would return the same kind of value again.
    """


class WorkerTracebackError(Exception):
    """The traceback of an exception raised in a worker process, as text; not public.

    A worker process cannot send the traceback itself, so the exception arrives with
    this as its ``__cause__`` (as concurrent.futures does), and a Python traceback of
    the failure shows where the body raised. When the exception itself could not
    travel, it is the ``__cause__`` of the `TaskFailedError`, which names the
    exception's type and message.
    """


class UsageError(Exception):
    """The command line asks for something that cannot be (exit status 2); not public."""
