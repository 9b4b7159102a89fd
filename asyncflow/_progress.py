"""Live progress of a run, per task class: a rich display on a terminal, a live cell output in
Jupyter, log lines otherwise.

The scheduler calls the hooks (`started`, `ran`, `reused`, `failed`) only when the
``progress`` run option is on, so a run without it pays nothing per node; the hooks only
count. On a terminal one line per class (done/total, queued, running, cached, failed,
elapsed) is redrawn in place by rich's `Live` (its refresh thread only reads the counts). In
an IPython kernel the same lines, as an HTML table, are one output of the running cell,
updated in place by a `CellDisplay` thread that only reads them, and ending with the
summary. Anywhere else a line is logged to the ``asyncflow.progress`` logger when a class
completes, and a summary at the end.
"""

from __future__ import annotations

import html
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ._notebook import CellDisplay, in_kernel

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from ._notebook import Bundle

logger = logging.getLogger("asyncflow.progress")

_SUMMARY = (
    "run ended after %.2f s: %d/%d done (%d run, %d cached, %d failed, %d not run) in %d task class(es)"
)


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

    def elapsed(self, now: float) -> str:
        """Its time from its first event until done (or `now`), as rich's `TimeElapsedColumn` shows it."""
        if self.started is None:
            return "-:--:--"
        seconds = int(max(0.0, (self.finished or now) - self.started))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunProgress:
    """Progress of one run: hooks for the scheduler, shown live or logged.

    Use as a context manager around the run; `totals` gives the nodes per class
    (by `task_name`), in the order the lines are shown. Given a `file`, it shows the
    progress there (live if it is a terminal), never in a notebook cell.
    """

    def __init__(self, totals: dict[str, int], *, file: TextIO | None = None) -> None:
        self._classes = {name: _Class(name, n) for name, n in totals.items()}
        self._console = Console(file=file if file is not None else sys.stdout)
        self._started = time.perf_counter()
        self._ended: float | None = None
        self._live: Progress | None = None
        self._cell: CellDisplay | None = None
        # Taken to add a class (rare) and by the cell's refresh thread to list them; the
        # hooks change counts without it.
        self._lock = threading.Lock()
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []  # sent through the live display
        self._width = 0
        if file is None and in_kernel():
            self._cell = CellDisplay(self._bundle)
        elif self._console.is_terminal:
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
                with self._lock:
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
        elif self._cell is not None:
            self._cell.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for counts in self._classes.values():
            counts.queued = counts.running = 0  # a cancelled run leaves none running
            self._update(counts)
        self._ended = time.perf_counter()
        if self._live is not None:
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._live.stop()
        elif self._cell is not None:
            self._cell.stop()  # its last drawing ends with the summary
        else:
            logger.info(_SUMMARY, *self._summary())

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

    def reused(self, task_name: str, count: int = 1) -> None:
        """`count` nodes were fresh in the cache (or computed by another run)."""
        counts = self._of(task_name)
        counts.cached += count
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
        elif completes and self._cell is None:
            started = counts.started if counts.started is not None else self._started
            logger.info(
                "%s: %d/%d done (%d run, %d cached, %d failed) in %.2f s",
                counts.name, done, counts.total, counts.ran, counts.cached, counts.failed, (finished or 0.0) - started,
            )  # fmt: skip

    def _summary(self) -> tuple[float, int, int, int, int, int, int, int]:
        """The values of `_SUMMARY`, once the run ended."""
        classes = self._classes.values()
        total = sum(c.total for c in classes)
        ran = sum(c.ran for c in classes)
        cached = sum(c.cached for c in classes)
        failed = sum(c.failed for c in classes)
        skipped = total - ran - cached - failed
        ended = self._ended if self._ended is not None else time.perf_counter()
        return (
            ended - self._started, ran + cached + failed, total, ran, cached, failed, skipped, len(self._classes)
        )  # fmt: skip

    def _bundle(self) -> Bundle:
        """The lines of a notebook cell: plain text and an HTML table, with the summary once ended.

        Called on the cell's refresh thread: it only reads the counts.
        """
        with self._lock:
            classes = list(self._classes.values())
        now = time.perf_counter()
        width = max((len(c.name) for c in classes), default=0)
        text = [
            f"{c.name.ljust(width)}  {c.done}/{c.total}  queued {c.queued}  running {c.running}"
            f"  cached {c.cached}  failed {c.failed}  {c.elapsed(now)}"
            for c in classes
        ]
        cell = '<td style="text-align:right">'
        rows = [
            f'<tr><td style="text-align:left"><code>{html.escape(c.name)}</code></td>'
            f'<td><progress value="{c.done}" max="{max(c.total, 1)}"></progress></td>'
            f"{cell}{c.done}/{c.total}</td>{cell}{c.queued}</td>{cell}{c.running}</td>{cell}{c.cached}</td>"
            + (f'{cell}<b style="color:#c00">{c.failed}</b></td>' if c.failed else f"{cell}0</td>")
            + f"{cell}{c.elapsed(now)}</td></tr>"
            for c in classes
        ]
        head = "".join(
            f"<th>{h}</th>"
            for h in ("task class", "", "done", "queued", "running", "cached", "failed", "elapsed")
        )
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if self._ended is not None:
            summary = _SUMMARY % self._summary()
            text.append(summary)
            table += f"<p>{html.escape(summary)}</p>"
        return {"text/plain": "\n".join(text), "text/html": table}


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
