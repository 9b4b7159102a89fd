"""The ``asyncflow`` command line: ``run``, ``graph``, ``status``, ``clear``, ``check``, history, ``serve``.

Exit statuses: 0 success, 1 a task failed (or any other asyncflow error: the graph, the
cache, a class's source, printed as ``Type: message``), 2 a usage error (missing
taskfile, no such entrypoint, bad option value), 130 on Ctrl-C. Each command has one
async implementation, started with `anyio.run`; the library does the work, this module
only parses and reports (`_taskfile.py` loads the taskfile).

At its top it imports only what parsing needs (argparse and the errors): each command
imports the rest, logging, anyio and the engine included, so ``asyncflow --help`` and a
usage error never wait for them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
import typing
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TextIO

from ._errors import AsyncflowError, OptionError, TaskFailedError, UsageError, WorkflowFailedError
from ._options import resolve_cache_dir

if TYPE_CHECKING:
    import logging
    from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
    from pathlib import Path
    from types import ModuleType

    import anyio

    from ._cache.store import Attempt
    from ._explain import NodeStatus
    from ._options import RunOptions
    from ._render import Format
    from ._task import Task


PROG = "asyncflow"
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


def _log() -> logging.Logger:
    """Return asyncflow's logger (logging is imported by what logs, not by the help)."""
    import logging

    return logging.getLogger("asyncflow")


def _write(text: str = "", *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Show a warning (a `CacheWarning`: asyncflow recovered from a damaged cache) as a log line."""
    _log().warning("%s: %s", category.__name__, message)


def _cache_dir(option: str | None, taskfile: str | None) -> Path:
    """``--cache-dir``, else ``$AF_CACHE_DIR``, else ``.cache`` next to the taskfile (or here)."""
    from pathlib import Path

    if option is not None:
        return Path(option).absolute()
    if os.environ.get("AF_CACHE_DIR") or taskfile is None:
        return resolve_cache_dir(None)
    return Path(taskfile).absolute().parent / ".cache"


# Parsing option values.


def _rate_limits(text: str) -> dict[str, int]:
    import json

    try:
        value: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--rate-limits {text!r} is not valid JSON ({exc}); "
            "give an object of channel names to positive ints, e.g. --rate-limits '{\"gpu\": 2}'"
        ) from exc
    if isinstance(value, dict):
        items: list[tuple[object, object]] = list(value.items())  # pyright: ignore[reportUnknownArgumentType]  # JSON
        if all(isinstance(k, str) and type(v) is int and v >= 1 for k, v in items):
            return {str(k): int(v) for k, v in items}  # pyright: ignore[reportArgumentType]  # checked above
    raise UsageError(
        f"--rate-limits {text!r} is not an object of channel names to positive ints; "
        'e.g. --rate-limits \'{"gpu": 2, "mymod.Train": 4}\''
    )


def _prefixes(entries: Sequence[str]) -> dict[str, list[str]]:
    import shlex

    out: dict[str, list[str]] = {}
    for entry in entries:
        channel, sep, command = entry.partition("=")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--prefix {entry!r}: the command cannot be split like a shell ({exc})") from exc
        if not sep or not channel or not argv:
            raise UsageError(
                f"--prefix {entry!r} is not CHANNEL=COMMAND; e.g. --prefix 'gpu=srun -p gpu --gres=gpu:1'"
            )
        out[channel] = argv
    return out


def _log_level(text: str) -> int:
    import logging

    level = logging.getLevelNamesMapping().get(text.upper()) if sys.version_info >= (3, 11) else None
    if level is None and text.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        level = int(getattr(logging, text.upper()))
    if level is not None:
        return level
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"unknown log level {text!r}; use DEBUG, INFO, WARNING or ERROR")


# The commands.


class RunArgs(NamedTuple):
    """The parsed arguments of ``asyncflow run``."""

    taskfile: str
    entry: str
    cache_dir: str | None
    max_workers: int | None
    executor: str | None
    rate_limits: str | None
    prefix: list[str]
    detect_source_change: bool | None
    force_entrypoint: bool
    on_error: str | None
    progress: bool = True
    arguments: tuple[str, ...] = ()  # after the taskfile: the entrypoint's build_task arguments


async def cmd_run(args: RunArgs) -> int:
    """Run the taskfile's entrypoint; report its result, or which tasks failed."""
    import logging

    from ._taskfile import load_taskfile

    root = _entry_task(load_taskfile(args.taskfile), args.taskfile, args.entry, args.arguments)
    cache_dir = _cache_dir(args.cache_dir, args.taskfile)
    options: RunOptions = {"cache_dir": cache_dir}
    if args.max_workers is not None:
        options["max_workers"] = args.max_workers
    if args.executor == "process":
        options["executor"] = "process"
    if args.rate_limits is not None:
        options["rate_limits"] = _rate_limits(args.rate_limits)
    if args.prefix:
        options["prefixes"] = _prefixes(args.prefix)
    if args.detect_source_change is not None:
        options["detect_source_change"] = args.detect_source_change
    if args.on_error == "continue":
        options["on_error"] = "continue"
    options["progress"] = args.progress
    log = _log()
    if args.force_entrypoint and await root.clear(cache_dir=cache_dir):
        log.info("removed the cached result of %r (--force-entrypoint)", root)
    log.info("running %r with the cache in %s", root, cache_dir)
    try:
        value, stats = await root.run_with_stats(**options)
    except (TaskFailedError, WorkflowFailedError) as exc:
        errors = [exc] if isinstance(exc, TaskFailedError) else _flatten(exc)
        for error in errors:
            log.error("%s", str(error).splitlines()[0], exc_info=error)
        _write(f"{PROG}: {len(errors)} task(s) failed:", err=True)
        for error in errors:
            _write(f"  {error.task}: {_last_line(error)}", err=True)
        if log.isEnabledFor(logging.ERROR):
            _write("(full tracebacks in the log above)", err=True)
        return FAILED
    text = repr(value)
    _write(f"{root!r} = {text if len(text) <= 200 else text[:197] + '...'}")
    _write(f"{stats.run} run, {stats.reused} from cache in {stats.elapsed:.2f} s")
    return OK


def _flatten(group: WorkflowFailedError) -> list[TaskFailedError]:
    return [e for e in group.exceptions if isinstance(e, TaskFailedError)]


def _last_line(error: TaskFailedError) -> str:
    """The failure in one line: the original exception's last line, else the message's first."""
    import traceback

    cause = error.__cause__
    if isinstance(cause, BaseException):
        return traceback.format_exception_only(type(cause), cause)[-1].strip()
    return str(error).splitlines()[0]


async def cmd_graph(
    taskfile: str,
    entry: str,
    arguments: Sequence[str],
    cache_dir: str | None,
    fmt: Format,
    output: str | None,
) -> int:
    """Print (or write) the graph with each node's fresh/stale state and reason."""
    from pathlib import Path

    import anyio

    from ._errors import GraphvizError
    from ._explain import explain
    from ._render import IMAGE_FORMATS, render, write_image
    from ._taskfile import load_taskfile

    root = _entry_task(load_taskfile(taskfile), taskfile, entry, arguments)
    statuses: list[NodeStatus] = await explain(root, cache_dir=_cache_dir(cache_dir, taskfile))
    image = output is not None and Path(output).suffix.lower().lstrip(".") in IMAGE_FORMATS
    text = render(statuses, "dot" if image else fmt)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return OK
    try:
        if image:
            await anyio.to_thread.run_sync(write_image, text, Path(output))
        else:
            await anyio.Path(output).write_text(text if text.endswith("\n") else text + "\n")
    except GraphvizError as exc:
        if exc.reason == "format":
            raise UsageError(str(exc)) from exc
        _write(f"{PROG} graph: {exc}", err=True)
        return FAILED
    except OSError as exc:
        raise UsageError(f"--output {output}: cannot write it ({exc})") from exc
    _write(f"wrote {output}")
    return OK


async def cmd_status(cache_dir: str | None, as_json: bool) -> int:
    """Show per task class what the cache holds."""
    import json

    from ._cache.store import summarize

    where = _cache_dir(cache_dir, None)
    classes = await summarize(where)
    if as_json:
        doc = {
            "cache_dir": str(where),
            "classes": [
                {
                    "task_name": c.task_name,
                    "nodes": c.nodes,
                    "bytes": c.size,
                    "last_run": c.last_run,
                    "last_failure": None
                    if c.last_failure is None
                    else {"task": c.last_failure[0], "error": c.last_failure[1], "at": c.last_failure[2]},
                }
                for c in classes or []
            ],
        }
        _write(json.dumps(doc, indent=2))
        return OK
    if classes is None:
        _write(f"no asyncflow cache in {where} (nothing has run with this --cache-dir)")
        return OK
    _write(f"cache: {where}")
    rows = [("task class", "nodes", "bytes", "last run", "last failure")]
    for c in classes:
        failure = "-"
        if c.last_failure is not None:
            _, error, at = c.last_failure
            failure = f"{_when(at)} {error.splitlines()[0]}"
        rows.append(
            (c.task_name, str(c.nodes), _size(c.size), _when(c.last_run) if c.last_run else "-", failure)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]), r[3].ljust(widths[3])]
        _write("  ".join([*cells, r[4]]).rstrip())
    return OK


class _ArgumentsParser(argparse.ArgumentParser):
    """Parses the entrypoint's arguments; a mistake is a `UsageError`, not an exit from inside the run."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    tuples: frozenset[str] = frozenset()  # arguments annotated as tuples: a tuple and a list are two keys

    def parse(self, given: Sequence[str]) -> dict[str, Any]:
        parsed = {k: v for k, v in vars(self.parse_args(list(given))).items() if v is not _UNSET}
        return {k: tuple(v) if k in self.tuples else v for k, v in parsed.items()}


_UNSET: Any = object()  # an argument not given: build_task's default applies


def _entry_task(module: ModuleType, taskfile: str, name: str, arguments: Sequence[str]) -> Task[Any, Any]:
    """Make the taskfile's task class `name` from `arguments`, the options after the taskfile.

    What `run`, `graph`, `clear` (its entrypoint), `show` and `logs` (a class named as TASK) share.

    Raises:
        UsageError: no such class, or arguments its build_task does not take.
    """
    from ._taskfile import entry_class, entrypoint

    parsed = _arguments_parser(entry_class(module, taskfile, name)).parse(arguments)
    return entrypoint(module, taskfile, name, parsed)


def _arguments_parser(cls: type[Any]) -> _ArgumentsParser:
    """Parse the arguments of `cls.build_task` from ``--name VALUE`` options, converted by its annotations.

    ``int``, ``float``, ``str``, ``Path`` (and ``X | None`` of those), ``bool`` (``--name`` /
    ``--no-name``), ``list[X]`` and ``tuple[X, ...]`` (several values), ``Literal[...]``
    (its choices); any other annotation takes JSON (``--rows '[1, 2]'``).
    """
    import inspect
    import json
    from pathlib import Path

    scalars: dict[object, Callable[[str], object]] = {int: int, float: float, str: str, Path: Path}
    parser = _ArgumentsParser(
        add_help=False,
        usage=argparse.SUPPRESS,
        argument_default=_UNSET,
    )
    group = parser.add_argument_group(f"arguments of {cls.__qualname__}.build_task (after the taskfile)")
    try:
        hints = typing.get_type_hints(cls.build_task)
    except Exception:  # an annotation that does not resolve: its value is taken as JSON
        hints = {}
    for name, param in inspect.signature(cls.build_task).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        required = param.default is inspect.Parameter.empty
        shown = "required" if required else f"default {param.default!r}"
        hint = hints.get(name, Any)
        if typing.get_origin(hint) in (types.UnionType, typing.Union):  # X | None: X
            members = [h for h in typing.get_args(hint) if h is not type(None)]
            hint = members[0] if len(members) == 1 else Any
        origin, inner = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            group.add_argument(
                *flags, dest=name, action=argparse.BooleanOptionalAction, required=required, help=shown
            )
        elif hint in scalars:
            group.add_argument(
                *flags,
                dest=name,
                type=scalars[hint],
                required=required,
                metavar=getattr(hint, "__name__", "X").upper(),
                help=shown,
            )
        elif origin in (list, tuple) and inner and inner[0] in scalars:
            convert = scalars[inner[0]]
            if origin is tuple:
                parser.tuples |= {name}
            group.add_argument(
                *flags, dest=name, type=convert, nargs="+", required=required, help=f"one or more; {shown}"
            )
        elif origin is typing.Literal:
            literal: Callable[[str], object] = str if all(isinstance(c, str) for c in inner) else int
            group.add_argument(*flags, dest=name, type=literal, choices=inner, required=required, help=shown)
        else:
            group.add_argument(
                *flags, dest=name, type=json.loads, required=required, metavar="JSON", help=shown
            )
    return parser


async def cmd_runs(cache_dir: str | None, last: int, as_json: bool) -> int:
    import json

    """Show the latest runs of the cache's history."""
    from ._cache.store import history

    where = _cache_dir(cache_dir, None)
    runs = await history(where, last)
    if as_json:
        doc = {
            "cache_dir": str(where),
            "runs": [
                {
                    "id": r.id,
                    "entrypoint": r.entrypoint,
                    "key": r.root,
                    "started": r.started,
                    "ended": r.ended,
                    "outcome": r.outcome,
                    "counts": json.loads(r.counts),
                    "host": r.host,
                    "pid": r.pid,
                    "options": json.loads(r.options),
                }
                for r in runs or []
            ],
        }
        _write(json.dumps(doc, indent=2))
        return OK
    if not runs:
        _write(f"no runs recorded in {where}" + ("" if runs is not None else " (no asyncflow cache there)"))
        return OK
    rows = [["started", "took", "outcome", "run", "reused", "failed", "skipped", "entrypoint", "where"]]
    for r in runs:
        counts = json.loads(r.counts)
        took = "-" if r.ended is None else f"{r.ended - r.started:.2f} s"
        tally = [str(counts.get(k, "-")) for k in ("run", "reused", "failed", "skipped")]
        rows.append([_when(r.started), took, r.outcome, *tally, r.entrypoint, f"{r.host}:{r.pid}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 3, 4, 5, 6}
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        _write("  ".join(cells).rstrip())
    return OK


def _named_task(taskfile: str, written: str, arguments: Sequence[str]) -> Task[Any, Any]:
    """Return the task TASK names: written as in Python (``Square(3)``), or a class and its arguments.

    ``Main --n 5`` (a class's name, then options after TASK) makes the task ``run`` makes
    of ``--n 5``, with the same conversions.

    Raises:
        UsageError: it names no task, or options follow a task that is not a class's name.
    """
    import shlex

    from ._taskfile import load_taskfile, task_of

    module = load_taskfile(taskfile)
    if written.isidentifier() and (arguments or isinstance(getattr(module, written, None), type)):
        return _entry_task(module, taskfile, written, arguments)
    if arguments:
        raise UsageError(
            f"unrecognized arguments: {shlex.join(arguments)}; options after TASK are build_task "
            f"arguments, given after a task class's name: {written.partition('(')[0]} --name VALUE"
        )
    return task_of(module, taskfile, written)


async def cmd_show(
    taskfile: str, written: str, arguments: Sequence[str], cache_dir: str | None, whole: bool
) -> int:
    """Show one task: its state and why, its result, its edges, its latest attempts and output."""
    from ._cache.store import attempts_of_node, load_result, read_log
    from ._errors import CacheError
    from ._explain import explain

    task = _named_task(taskfile, written, arguments)
    where = _cache_dir(cache_dir, taskfile)
    statuses = await explain(task, cache_dir=where)
    names = {s.key: repr(s.task) for s in statuses}
    status = next(s for s in statuses if s.key == task.__af_key__)
    _write(f"{task!r}  ({status.key})")
    _write(
        f"state: {status.state}" + (f": {status.reason}" if status.reason else " (the next run reuses it)")
    )
    try:
        value = await load_result(where, status.key, repr(task))
        text = repr(value)
        cut = not whole and len(text) > 200
        _write(
            f"result: {text[:197] + '...' if cut else text}" + ("  (--result for all of it)" if cut else "")
        )
    except CacheError as exc:  # no result, or one that cannot be read back
        _write(f"result: none ({str(exc).splitlines()[0]})")
    if status.deps:
        _write("requires: " + ", ".join(names[k] for k in status.deps))
    if status.awaited:
        _write("awaited in its last run: " + ", ".join(names[k] for k in status.awaited))
    tried = await attempts_of_node(where, status.key, 5)
    if not tried:
        _write("attempts: none in the history")
        return OK
    _write("attempts (the latest first):")
    for attempt in tried:
        error = f": {attempt.error}" if attempt.error else ""
        _write(f"  {_when(attempt.started)}  {attempt.ended - attempt.started:.2f} s  attempt {attempt.attempt} "
               f"on {attempt.place}: {attempt.outcome}{error}  (run {attempt.run})")  # fmt: skip
    output = read_log(where, tried[0])
    _write("output of the latest attempt:" + ("\n" + output.rstrip("\n") if output else " none"))
    return OK


async def cmd_logs(
    taskfile: str, written: str, arguments: Sequence[str], cache_dir: str | None, last: int, follow: bool
) -> int:
    """Print what a task's latest attempts printed and logged (with `follow`, then each new one)."""
    from ._cache.store import attempts_of_node

    task = _named_task(taskfile, written, arguments)
    where = _cache_dir(cache_dir, taskfile)
    if follow:
        return await _follow_logs(task, where, last)
    tried = await attempts_of_node(where, task.__af_key__, last)
    if not tried:
        _write(
            f"{task!r} has no attempt in the history of {where} (it has not run, or not since the runs kept)"
        )
        return OK
    for attempt in reversed(tried):
        _write_attempt(task, where, attempt)
    return OK


def _write_attempt(task: Task[Any, Any], where: Path, attempt: Attempt) -> None:
    """Print one attempt: a line saying when, how long, where and how it ended, then its output."""
    from ._cache.store import read_log

    took = attempt.ended - attempt.started
    error = f": {attempt.error}" if attempt.error else ""
    _write(f"== {task!r} attempt {attempt.attempt} of run {attempt.run}, {_when(attempt.started)}, "
           f"{took:.2f} s on {attempt.place}: {attempt.outcome}{error}")  # fmt: skip
    text = read_log(where, attempt)
    if text:
        _write(text.rstrip("\n"))


_FOLLOW_EVERY = 0.5  # seconds between looks at the history for `logs --follow`


async def _follow_logs(task: Task[Any, Any], where: Path, last: int) -> int:
    """Print the latest `last` attempts of `task`, then every new one as the history gets it, until Ctrl-C.

    An attempt reaches the history, with its output, when it ends. Each look opens the
    index, reads the batches of attempts it has not read yet, and closes it again.
    """
    import signal

    import anyio

    from ._cache.store import new_attempts_of_node

    seen: set[tuple[str, int]] = set()
    with anyio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_first, interrupts, tg.cancel_scope)
            found, batches = await new_attempts_of_node(where, task.__af_key__, frozenset())
            for attempt in found[-last:]:
                _write_attempt(task, where, attempt)
            if not found:
                _write(f"{task!r} has no attempt in the history of {where} yet; waiting for one "
                       "(Ctrl-C to stop)", err=True)  # fmt: skip
            while True:
                seen.update(batches)
                await anyio.sleep(_FOLLOW_EVERY)
                found, batches = await new_attempts_of_node(where, task.__af_key__, frozenset(seen))
                for attempt in found:
                    _write_attempt(task, where, attempt)
    return OK  # interrupted: that is how following ends


async def _cancel_on_first(signals: AsyncIterator[int], scope: anyio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def cmd_serve(cache_dir: str | None, host: str, port: int, poll: float) -> int:
    """Serve the web view of a cache's history until interrupted."""
    import contextlib
    import signal

    import anyio

    try:
        import uvicorn

        from .web import app
    except ImportError as exc:
        raise UsageError(
            f"serve needs the web extra ({exc}); install it: pip install 'asyncflow[web]'"
        ) from exc
    where = _cache_dir(cache_dir, None)
    if host not in ("127.0.0.1", "localhost", "::1"):
        _log().warning(
            "serving on %s: anyone who can reach it sees the history and output of %s", host, where
        )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield  # Ctrl-C and SIGTERM are ours (below): uvicorn would raise them again once stopped

    config = uvicorn.Config(app(where, poll=poll), host=host, port=port, log_level="warning", lifespan="off")
    server = Server(config)
    shown = f"[{host}]" if ":" in host else host
    _write(f"{PROG}: the history of {where} on http://{shown}:{port}/ (Ctrl-C stops)")

    async def stop_on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                server.should_exit = True  # it finishes the requests under way, then returns
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal)
        await server.serve()
        tg.cancel_scope.cancel()
    return OK if server.started else FAILED


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("asyncflow bug: unreachable")


async def cmd_clear(
    taskfile: str, entry: str, arguments: Sequence[str], cache_dir: str | None, all_of: list[str]
) -> int:
    """Remove cached results; report what was removed and what became stale."""
    from ._cache.store import clear_class, clear_nodes
    from ._explain import explain
    from ._taskfile import class_name, load_taskfile

    module = load_taskfile(taskfile)
    root = _entry_task(module, taskfile, entry, arguments)
    where = _cache_dir(cache_dir, taskfile)
    names = [class_name(module, taskfile, c) for c in all_of]
    before = {s.key: s for s in await explain(root, cache_dir=where)}
    removed: list[str] = []
    if names:
        for name in names:
            count = await clear_class(where, name)
            _write(f"removed {count} result(s) of {name}")
            removed.extend(k for k, s in before.items() if s.task_name == name)
    else:
        removed = await clear_nodes(where, list(before))
        _write(f"removed {len(removed)} result(s) of the graph of {root!r}: {_some(before, removed)}")
    after = await explain(root, cache_dir=where)
    stale = [
        s.key for s in after if s.state != "fresh" and before[s.key].state == "fresh" and s.key not in removed
    ]
    if stale:
        _write(f"now stale ({len(stale)}): {_some(before, stale)}")
    else:
        _write("nothing else became stale")
    return OK


async def cmd_check(cache_dir: str | None, repair: bool) -> int:
    """Check the cache for damage (and with `repair`, remove it); exit 1 if damage is left."""
    from ._cache.store import check

    where = _cache_dir(cache_dir, None)
    report = await check(where, repair=repair)
    if report is None:
        _write(f"no asyncflow cache in {where} (nothing has run with this --cache-dir)")
        return OK
    _write(f"cache: {where}")
    if report.problems:
        _write(f"index: DAMAGED, SQLite's integrity check reports {len(report.problems)} problem(s):")
        for problem in report.problems[:10]:
            _write(f"  {problem}")
    else:
        _write("index: ok (SQLite's integrity check)")
    unchecked = f", {report.unchecked} stored before digests (files only)" if report.unchecked else ""
    _write(
        f"results: {report.checked} checked against their digests{unchecked}, {len(report.damaged)} damaged"
    )
    for damaged in report.damaged[:20]:
        _write(f"  {damaged.key}: {damaged.reason}")
    if len(report.damaged) > 20:
        _write(f"  ... and {len(report.damaged) - 20} more")
    if report.orphans:
        _write(f"result files no record names: {len(report.orphans)}")
    if report.leftovers:
        _write(f"temporary files left by writers that died: {len(report.leftovers)}")
    if report.repaired:
        if report.kept_aside is not None:
            _write(
                f"repaired: rebuilt the index from what could be read; the damaged one is kept as {report.kept_aside}"
            )
        if report.damaged:
            _write(
                f"repaired: removed {len(report.damaged)} damaged result(s); they run again when next needed"
            )
        if report.orphans or report.leftovers:
            _write(f"removed {len(report.orphans) + len(report.leftovers)} stray file(s)")
        return OK
    if not report.clean:
        _write(
            f"run `{PROG} check --repair --cache-dir {where}` to remove the damage (what it held runs again)"
        )
        return FAILED
    return OK


def _some(statuses: dict[str, NodeStatus], keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(statuses[k].task) for k in keys[:limit])
    more = f", ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return (shown + more) or "none"


# The parser: one function per subcommand.


def _add_taskfile(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    parser.add_argument(
        "taskfile",
        metavar="TASKFILE",
        nargs="?" if optional else None,
        help="a Python file defining the tasks",
    )
    parser.add_argument(
        "-e",
        "--entrypoint",
        dest="entry",
        default="Main",
        metavar="NAME",
        help="the task class to use (default: Main)",
    )


def _add_task(parser: argparse.ArgumentParser) -> None:
    """Add TASKFILE, TASK (written as in Python) and --cache-dir, for commands about one task."""
    _add_taskfile(parser)
    parser.add_argument(
        "task",
        metavar="TASK",
        help="the task, as in Python: 'Square(3)'; or a task class's name, then its build_task "
        "arguments as `run` takes them: Main --n 5",
    )
    _add_cache_dir(parser, ".cache next to TASKFILE")


def _add_cache_dir(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--cache-dir", metavar="DIR", help=f"the cache directory (default: $AF_CACHE_DIR, else {default})"
    )


_LEVEL = "log level: DEBUG, INFO (default), WARNING or ERROR"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole command line."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run asyncflow workflows and look after their cache.",
        epilog="exit status: 0 success, 1 a task failed, 2 usage error",
    )
    parser.add_argument("-l", "--loglevel", type=_log_level, default="INFO", metavar="LEVEL", help=_LEVEL)
    # -l is also accepted after the command; there it overrides only when given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-l", "--loglevel", type=_log_level, default=argparse.SUPPRESS, metavar="LEVEL", help=_LEVEL
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _run_parser,
        _graph_parser,
        _status_parser,
        _runs_parser,
        _show_parser,
        _logs_parser,
        _clear_parser,
        _check_parser,
        _serve_parser,
    ):
        add(sub, common)
    return parser


def _entry_parser(
    sub: Any, common: argparse.ArgumentParser, name: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """Add a command of TASKFILE's entrypoint, whose other options after TASKFILE are its build_task arguments.

    Its -h/--help, given a TASKFILE, lists them too (`cmd_help`).
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=[common],
        add_help=False,  # its own -h: with a TASKFILE, the help also lists its entrypoint's arguments
        allow_abbrev=False,  # --n is the entrypoint's n, not the start of a longer option of the command
        usage=f"{PROG} {name} [options] TASKFILE [--ARGUMENT VALUE ...]",
        **kwargs,
    )
    parser.add_argument(
        "-h", "--help", action="store_true", help="show this help (and the entrypoint's arguments) and exit"
    )
    parser.set_defaults(command_parser=parser)
    _add_taskfile(parser, optional=True)  # not for --help alone
    _add_cache_dir(parser, ".cache next to TASKFILE")
    return parser


def _run_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: argparse's private subparsers type
    run = _entry_parser(
        sub,
        common,
        "run",
        help="run a taskfile's Main task (only what is stale)",
        description="Run the Main task of TASKFILE (or -e NAME): everything stale upstream of it, "
        "in parallel, then print its result. Options after TASKFILE that are not the command's own are "
        "the arguments of the entrypoint's build_task, --name VALUE each, converted by its annotations "
        "(`asyncflow run flow.py --help` lists them).",
        epilog="exit status: 0 success, 1 a task failed (a summary follows the log), 2 usage error",
    )
    run.add_argument(
        "-w",
        "--max-workers",
        type=int,
        metavar="N",
        help="plain def bodies working at once (threads or processes)",
    )
    run.add_argument(
        "-t",
        "--executor",
        choices=["thread", "process"],
        help="where plain def bodies run: worker threads (default) or worker processes",
    )
    run.add_argument(
        "--rate-limits",
        metavar="JSON",
        help="at most n tasks of a channel at once, as JSON: '{\"gpu\": 2}' (a channel is a "
        "class's channel= keyword or its task_name)",
    )
    run.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="CHANNEL=COMMAND",
        help="run the bodies of CHANNEL's tasks through COMMAND (split like a shell), "
        "e.g. 'gpu=srun -p gpu'; repeatable",
    )
    run.add_argument(
        "-D",
        "--detect-source-change",
        dest="detect_source_change",
        action="store_const",
        const=True,
        help="re-run tasks whose code changed (default, unless $AF_DETECT_SOURCE_CHANGE=0)",
    )
    run.add_argument(
        "--no-detect-source-change",
        dest="detect_source_change",
        action="store_const",
        const=False,
        help="reuse cached results even when their code changed",
    )
    run.add_argument(
        "--force-entrypoint",
        action="store_true",
        help="re-run the entrypoint task even if its cached result is fresh",
    )
    run.add_argument(
        "--on-error",
        choices=["cancel", "continue"],
        help="on a failure, cancel the rest (default) or finish every branch that does not depend on it",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress per task class: live lines on a terminal, log lines otherwise (default: on)",
    )


def _graph_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    graph = _entry_parser(
        sub,
        common,
        "graph",
        help="draw the task graph, each node marked fresh or stale (and why)",
        description="Print the graph of TASKFILE's Main task (or -e NAME), each node fresh, stale "
        "or failed, with why it is stale. Options after TASKFILE that are not the command's own are "
        "the arguments of the entrypoint's build_task, as for run (`asyncflow graph flow.py --help` "
        "lists them).",
    )
    graph.add_argument(
        "--format", choices=["mermaid", "dot", "text"], default="text", help="output format (default: text)"
    )
    graph.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE instead of stdout; a .png, .svg or .pdf FILE is drawn by Graphviz's dot",
    )


def _status_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    status = sub.add_parser(
        "status",
        parents=[common],
        help="what the cache holds, per task class",
        description="Per task class: results cached, their bytes, the last run and the last failure.",
    )
    _add_cache_dir(status, "./.cache")
    status.add_argument("--json", action="store_true", help="print JSON, for scripts")


def _runs_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    runs = sub.add_parser(
        "runs",
        parents=[common],
        help="the latest runs on the cache, the latest first",
        description="The history of the runs on a cache: when each started, how long it took, how it "
        "ended, how many tasks ran, were reused, failed or were skipped, and where it ran (host:pid). "
        "The cache keeps the latest 100 runs ($AF_KEEP_RUNS to change).",
    )
    _add_cache_dir(runs, "./.cache")
    runs.add_argument(
        "-n", "--last", type=int, default=20, metavar="N", help="show the latest N runs (default 20)"
    )
    runs.add_argument("--json", action="store_true", help="print JSON, for scripts")


def _show_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    show = sub.add_parser(
        "show",
        parents=[common],
        help="one task: its cached result, why it is fresh or stale, its latest attempts and output",
        description="Show TASK (written as in Python, e.g. 'Square(3)', with the names of TASKFILE): whether "
        "the next run would reuse it and why not, its cached result (cut at 200 characters unless "
        "--result), its requirements and the tasks its body awaited, its latest attempts over the runs "
        "the cache keeps, and what the latest one printed and logged. TASK may also be a task class's name "
        "followed by its build_task arguments, as run takes them: `Main --n 5` is what `asyncflow run "
        "TASKFILE --n 5` ran (`asyncflow run TASKFILE -e CLASS --help` lists a class's arguments).",
    )
    _add_task(show)
    show.add_argument("--result", action="store_true", help="print the cached result whole")


def _logs_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    logs = sub.add_parser(
        "logs",
        parents=[common],
        help="what a task printed and logged, attempt by attempt",
        description="Print what the body of TASK (written as in Python, e.g. 'Square(3)', with the names "
        "of TASKFILE) printed to stdout and stderr and logged, in its latest attempts over the runs the "
        "cache keeps, the latest last; a failed attempt ends with its traceback. TASK may also be a task "
        "class's name followed by its build_task arguments, as run takes them: `Main --n 5` is what "
        "`asyncflow run TASKFILE --n 5` ran.",
    )
    _add_task(logs)
    logs.add_argument(
        "-n", "--last", type=int, default=1, metavar="N", help="the latest N attempts (default 1)"
    )
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then keep printing each new attempt, as runs (in any process) go on, until Ctrl-C; an "
        "attempt shows, with its output, when it ends",
    )


def _serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="a live web view of the runs, their graphs, tasks and output",
        description="Serve a read-only web view of a cache's history: the runs (live while they go "
        "on), each run's graph and attempts, each task's attempts, output and traceback. It only "
        "reads the cache. Needs the web extra: pip install 'asyncflow[web]'.",
    )
    _add_cache_dir(serve, "./.cache")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only; the view has no login)",
    )
    serve.add_argument("-p", "--port", type=int, default=8765, help="the port to listen on (default 8765)")
    serve.add_argument(
        "--poll",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how often live pages look for changes (default 0.5)",
    )


def _clear_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    clear = _entry_parser(
        sub,
        common,
        "clear",
        help="remove cached results",
        description="Remove the cached results of the graph of TASKFILE's Main task (or -e NAME), or with "
        "--all-of every result of a class; report what was removed and what became stale. Options after "
        "TASKFILE that are not the command's own are the arguments of the entrypoint's build_task, as for "
        "run (`asyncflow clear flow.py --help` lists them).",
    )
    clear.add_argument(
        "--all-of",
        action="append",
        default=[],
        metavar="CLASS",
        help="remove every cached result of CLASS (a class of the taskfile, or a task_name) instead; repeatable",
    )


def _check_parser(sub: Any, common: argparse.ArgumentParser) -> None:  # Any: see _run_parser
    check = sub.add_parser(
        "check",
        parents=[common],
        help="check the cache for damage (and repair it)",
        description="Run SQLite's integrity check on the index and check every cached result against "
        "its digest; report what is damaged. With --repair, remove it: the damaged results run again "
        "when next needed. Repair while no workflow runs on this cache.",
        epilog="exit status: 0 no damage (or repaired), 1 damage found and left, 2 usage error",
    )
    _add_cache_dir(check, "./.cache")
    check.add_argument(
        "--repair",
        action="store_true",
        help="remove damaged results, stray files, and rebuild a damaged index from what can be read",
    )


async def cmd_help(parser: argparse.ArgumentParser, taskfile: str | None, entry: str) -> int:
    """Print a command's help; given a taskfile, with the build_task arguments of its entrypoint."""
    from ._taskfile import entry_class, load_taskfile

    text = parser.format_help()
    if taskfile is not None:
        text += _arguments_parser(entry_class(load_taskfile(taskfile), taskfile, entry)).format_help()
    _write(text.rstrip("\n"))
    return OK


def _command(ns: argparse.Namespace) -> Callable[[], Coroutine[Any, Any, int]]:
    """Bind the parsed namespace (untyped: argparse) to its command's coroutine function."""
    a: Any = ns  # argparse gives Any attributes; each is checked by its parser above
    if a.command in ("run", "graph", "clear"):  # made by `_entry_parser`
        if a.help:
            return lambda: cmd_help(a.command_parser, a.taskfile, a.entry)
        if a.taskfile is None:
            raise UsageError("the following arguments are required: TASKFILE")
    if a.command == "run":
        if a.max_workers is not None and a.max_workers < 1:
            raise UsageError(f"-w/--max-workers {a.max_workers}: give a positive number of workers")
        given = {name: getattr(a, name) for name in RunArgs._fields if name != "arguments"}
        run_args = RunArgs(**given, arguments=tuple(a.arguments))
        return lambda: cmd_run(run_args)
    if a.command == "graph":
        return lambda: cmd_graph(a.taskfile, a.entry, a.arguments, a.cache_dir, a.format, a.output)
    if a.command == "status":
        return lambda: cmd_status(a.cache_dir, a.json)
    if a.command == "show":
        return lambda: cmd_show(a.taskfile, a.task, a.arguments, a.cache_dir, a.result)
    if a.command == "logs":
        if a.last < 1:
            raise UsageError(f"-n/--last {a.last}: give a positive number of attempts")
        return lambda: cmd_logs(a.taskfile, a.task, a.arguments, a.cache_dir, a.last, a.follow)
    if a.command == "runs":
        if a.last < 1:
            raise UsageError(f"-n/--last {a.last}: give a positive number of runs")
        return lambda: cmd_runs(a.cache_dir, a.last, a.json)
    if a.command == "check":
        return lambda: cmd_check(a.cache_dir, a.repair)
    if a.command == "serve":
        if not 0 <= a.port <= 65535 or a.poll <= 0:
            raise UsageError(f"--port {a.port} / --poll {a.poll}: give a port 0-65535 and a positive poll")
        return lambda: cmd_serve(a.cache_dir, a.host, a.port, a.poll)
    assert a.command == "clear", "asyncflow bug: a subcommand without an implementation"
    return lambda: cmd_clear(a.taskfile, a.entry, a.arguments, a.cache_dir, a.all_of)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status (the console script exits with it)."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.command not in ("run", "graph", "clear", "show", "logs"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    ns.arguments = extra  # build_task's, parsed once the taskfile is loaded (see `_entry_task`)
    level: int = ns.loglevel
    import logging

    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    warnings.showwarning = _log_warning
    import anyio  # not before: the parser has printed any help and usage error

    try:
        return anyio.run(_command(ns))  # _command may raise UsageError too
    except (UsageError, OptionError) as exc:
        _write(f"{PROG} {ns.command}: error: {exc}", err=True)
        return USAGE
    except AsyncflowError as exc:  # the graph, the cache, a class's source, a host...
        _write(f"{PROG} {ns.command}: {type(exc).__name__}: {exc}", err=True)
        return FAILED
    except KeyboardInterrupt:
        _write(f"{PROG}: interrupted", err=True)
        return INTERRUPTED
    except BrokenPipeError:  # what reads the output went away (`| head`): stop quietly
        os.dup2(
            os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno()
        )  # Python's flush at exit fails too else
        return OK
