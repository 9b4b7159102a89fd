"""Live progress of a run, per task class: a rich display on a terminal, log lines otherwise.

The scheduler calls the hooks (`started`, `ran`, `reused`, `failed`) only when the
``progress`` run option is on, so a run without it pays nothing per node. On a terminal
one line per class (done/total, queued, running, cached, failed, elapsed) is redrawn in place by
rich's `Live` (its refresh thread only reads the counts); off a terminal a line is
logged to the ``asyncflow.progress`` logger when a class completes, and a summary at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

logger = logging.getLogger("asyncflow.progress")


@dataclass
class _Class:
    """The counts of one task class while the run goes on."""

    name: str
    total: int
    ran: int = 0
    cached: int = 0
    failed: int = 0
    queued: int = 0  # bodies waiting for their runner (a worker thread or process, a job slot)
    running: int = 0  # bodies running
    started: float | None = None  # perf_counter of its first event
    finished: float | None = None  # perf_counter when done reached total
    row: TaskID | None = field(default=None)  # its line on a terminal

    @property
    def done(self) -> int:
        return self.ran + self.cached + self.failed


class RunProgress:
    """Progress of one run: hooks for the scheduler, shown live or logged.

    Use as a context manager around the run; `totals` gives the nodes per class
    (by `task_name`), in the order the lines are shown.
    """

    def __init__(self, totals: dict[str, int], *, file: TextIO | None = None) -> None:
        self._classes = {name: _Class(name, n) for name, n in totals.items()}
        self._console = Console(file=file if file is not None else sys.stdout)
        self._started = time.perf_counter()
        self._live: Progress | None = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []  # sent through the live display
        self._width = 0
        if self._console.is_terminal:
            self._live = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("queued {task.fields[queued]}"),
                TextColumn("running {task.fields[running]}"),
                TextColumn("cached {task.fields[cached]}"),
                TextColumn("{task.fields[failed_text]}"),
                TimeElapsedColumn(),
                console=self._console,
                refresh_per_second=10,
            )
            self._width = max((len(name) for name in totals), default=0)
            for counts in self._classes.values():
                self._add_row(counts)

    def grow(self, totals: dict[str, int]) -> None:
        """Count nodes found while the run goes on (a body awaited tasks): `totals` more per class."""
        for name, n in totals.items():
            counts = self._classes.get(name)
            if counts is None:
                counts = self._classes[name] = _Class(name, n)
                self._add_row(counts)
            else:
                counts.total += n
                counts.finished = None
                if self._live is not None and counts.row is not None:
                    self._live.update(counts.row, total=counts.total)

    def _add_row(self, counts: _Class) -> None:
        if self._live is not None:
            counts.row = self._live.add_task(
                counts.name.ljust(self._width),
                total=counts.total,
                start=False,
                queued=0,
                running=0,
                cached=0,
                failed_text="failed 0",
            )

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
            self._handlers = _through_live()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for counts in self._classes.values():
            counts.queued = counts.running = 0  # a cancelled run leaves none running
            self._update(counts)
        if self._live is not None:
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._live.stop()
        else:
            self._summary()

    # Hooks, called by the scheduler per node.

    def started(self, task_name: str) -> None:
        """A node of `task_name` is handed to its runner: queued until `working`."""
        counts = self._of(task_name)
        counts.queued += 1
        self._update(counts)

    def working(self, task_name: str) -> None:
        """A queued body began to run (its runner had a thread, a worker or a job slot for it)."""
        counts = self._of(task_name)
        counts.queued -= 1
        counts.running += 1
        self._update(counts)

    def retried(self, task_name: str) -> None:
        """A running body failed and is queued to be tried again."""
        counts = self._of(task_name)
        counts.running -= 1
        counts.queued += 1
        self._update(counts)

    def ran(self, task_name: str) -> None:
        """A node's body finished with a result."""
        counts = self._of(task_name)
        counts.running -= 1
        counts.ran += 1
        self._update(counts)

    def reused(self, task_name: str) -> None:
        """A node was fresh in the cache (or computed by another run)."""
        counts = self._of(task_name)
        counts.cached += 1
        self._update(counts)

    def unreadable(self, task_name: str) -> None:
        """A node counted by `reused` had a result that cannot be read: it runs again."""
        counts = self._of(task_name)
        counts.cached -= 1
        self._update(counts)

    def failed(self, task_name: str, *, running: bool = True) -> None:
        """A node failed (after `started`, unless `running` is False)."""
        counts = self._of(task_name)
        if running:
            counts.running -= 1
        counts.failed += 1
        self._update(counts)

    # Showing.

    def _of(self, task_name: str) -> _Class:
        counts = self._classes[task_name]
        if counts.started is None:
            counts.started = time.perf_counter()
            if self._live is not None and counts.row is not None:
                self._live.start_task(counts.row)
        return counts

    def _update(self, counts: _Class) -> None:
        done = counts.done
        completes = done == counts.total and counts.finished is None
        finished = counts.finished = time.perf_counter() if completes else counts.finished
        if self._live is not None:
            assert counts.row is not None, "asyncflow bug: a progress line without a row"
            failed = f"[bold red]failed {counts.failed}[/]" if counts.failed else "failed 0"
            self._live.update(
                counts.row,
                completed=done,
                queued=counts.queued,
                running=counts.running,
                cached=counts.cached,
                failed_text=failed,
            )
        elif completes:
            started = counts.started if counts.started is not None else self._started
            logger.info(
                "%s: %d/%d done (%d run, %d cached, %d failed) in %.2f s",
                counts.name, done, counts.total, counts.ran, counts.cached, counts.failed, (finished or 0.0) - started,
            )  # fmt: skip

    def _summary(self) -> None:
        classes = self._classes.values()
        total = sum(c.total for c in classes)
        ran = sum(c.ran for c in classes)
        cached = sum(c.cached for c in classes)
        failed = sum(c.failed for c in classes)
        skipped = total - ran - cached - failed
        logger.info(
            "run ended after %.2f s: %d/%d done (%d run, %d cached, %d failed, %d not run) in %d task class(es)",
            time.perf_counter() - self._started, ran + cached + failed, total, ran, cached, failed, skipped,
            len(self._classes),
        )  # fmt: skip


def _through_live() -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Send the log handlers that write to the terminal through the live display; return them with their streams.

    While it draws, rich puts proxies in ``sys.stdout`` and ``sys.stderr`` that print above
    its lines; a handler keeps the stream it was given (``logging.basicConfig``'s keeps
    the real stderr), and its lines would land in the middle of a redrawn frame.
    """
    swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
    loggers = [
        logging.getLogger(),
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for name in ("stdout", "stderr"):
        proxy = getattr(sys, name)
        real = getattr(proxy, "rich_proxied_file", None)
        if real is None:
            continue
        for logger in loggers:
            for handler in logger.handlers:
                if not isinstance(handler, logging.StreamHandler):
                    continue
                typed = cast("logging.StreamHandler[Any]", handler)  # a handler of any stream
                if typed.stream is real:
                    swapped.append((typed, typed.setStream(proxy)))
    return swapped
