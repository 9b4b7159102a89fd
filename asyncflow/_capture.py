"""What a body prints and logs, kept for its attempt: per context, so concurrent bodies never mix.

While runs go on, ``sys.stdout`` and ``sys.stderr`` are tees and the root logger has one
more handler: each writes what it is given where it always went, and also into the
`Capture` of the body whose context it runs in (`CAPTURE`, set per attempt by the
scheduler; worker threads inherit it). Bodies in worker processes capture there and send
their output back with their answer; a job's output is relayed line by line into it.
Output written below Python (a C library, a subprocess writing to the inherited file
descriptors) is not seen. Each capture keeps its last `LIMIT` characters, and the job
that ran the attempt when its runner names one (`note_job`), for the history's place.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Generator

LIMIT = 1 << 20  # characters kept per attempt: its tail


class Capture:
    """What one attempt of a body printed and logged, in order: its last `LIMIT` characters.

    Made for every attempt, and most print nothing: it holds nothing until written to.
    """

    _chunks: list[str] | None = None
    _size = 0
    dropped = 0  # characters dropped from the front
    job = ""  # the job that ran the attempt ("job 1234", "pid 4321"), if its runner named it

    def write(self, text: str) -> None:
        if not text:
            return
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(text)
        self._size += len(text)
        while self._size > LIMIT:
            first = self._chunks[0]
            over = self._size - LIMIT
            if len(first) <= over:
                self._chunks.pop(0)
                cut = len(first)
            else:
                self._chunks[0] = first[over:]
                cut = over
            self._size -= cut
            self.dropped += cut

    def text(self) -> str:
        """Return what was kept, saying first how much was dropped, if anything was."""
        if self._chunks is None:
            return ""
        head = f"[asyncflow: {self.dropped} characters before these were dropped]\n" if self.dropped else ""
        return head + "".join(self._chunks)


CAPTURE: ContextVar[Capture | None] = ContextVar("asyncflow_capture", default=None)


class _Tee:
    """``sys.stdout`` or ``sys.stderr`` while runs go on: writes go on, and into the current capture."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        capture = CAPTURE.get()
        if capture is not None:
            capture.write(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer...
        return getattr(self.stream, name)


class _Handler(logging.Handler):
    """Puts the log records emitted in a body's context into its capture.

    Being a handler, it would keep logging's last resort (warnings to stderr when nothing
    else handles them) from acting: it acts in its place then.
    """

    def emit(self, record: logging.LogRecord) -> None:
        capture = CAPTURE.get()
        if capture is not None:
            capture.write(self.format(record) + "\n")
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and not _handled_elsewhere(record.name):
            last.handle(record)


def _handled_elsewhere(name: str) -> bool:
    """Tell whether a handler other than ours sees the records of the logger `name`."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(h is not _handler for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


_FORMAT = "%(levelname)s %(name)s: %(message)s"
_lock = threading.Lock()
_users = 0  # runs (in any thread) and worker calls capturing now
_handler = _Handler()
_handler.setFormatter(logging.Formatter(_FORMAT))


@contextmanager
def capturing() -> Generator[None]:
    """Tee ``sys.stdout``, ``sys.stderr`` and the root logger while the block runs (nested freely)."""
    global _users
    with _lock:
        if _users == 0:
            sys.stdout = _Tee(sys.stdout)
            sys.stderr = _Tee(sys.stderr)
            logging.getLogger().addHandler(_handler)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                logging.getLogger().removeHandler(_handler)
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    if isinstance(stream, _Tee):  # else someone replaced it since: leave theirs
                        setattr(sys, name, stream.stream)


def original(stream: TextIO) -> TextIO:
    """Return the stream a tee stands for (or `stream` itself): to write past the captures."""
    return stream.stream if isinstance(stream, _Tee) else stream


def add(text: str) -> None:
    """Add `text` (a job's line, a worker process's output) to the current capture, if any."""
    capture = CAPTURE.get()
    if capture is not None:
        capture.write(text)


def note_job(job: str) -> None:
    """Name the job that runs the current attempt (``job 1234``, ``pid 4321``): its history says where it ran."""
    capture = CAPTURE.get()
    if capture is not None:
        capture.job = job
