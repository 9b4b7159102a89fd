"""The tally of a run while it goes on: where the scheduler and the runners report each node's events.

Each event also goes to the live progress display when the run shows one. The frozen
`RunStats` are made from it only when asked for (`StatsBuilder.freeze`), by `run_with_stats`.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._progress import RunProgress
    from ._stats import RunStats


class _Counts:
    # Not a dataclass: making one runs `exec`, a millisecond of every first run's imports.
    __slots__ = ("durations", "failed", "retried", "reused", "run", "skipped")

    def __init__(self) -> None:
        self.run = self.reused = self.failed = self.retried = self.skipped = 0
        self.durations: list[float] = []


class Work:
    """One attempt of a body, for the live progress: queued until its runner lets it begin."""

    __slots__ = ("_name", "_progress", "began")

    def __init__(self, progress: RunProgress, task_name: str) -> None:
        self._progress = progress
        self._name = task_name
        self.began = False

    def begin(self) -> None:
        """Count the attempt as running from now on (once)."""
        if not self.began:
            self.began = True
            self._progress.working(self._name)


# The attempt whose body runs in this context, while the run shows its progress.
WORK: ContextVar[Work | None] = ContextVar("asyncflow_work", default=None)


def working() -> None:
    """Say that the body of this context's attempt begins now: its runner has a slot (or a worker, a job) for it."""
    work = WORK.get()
    if work is not None:
        work.begin()


class StatsBuilder:
    """The counts of a run while it goes on, from the scheduler's events about its nodes.

    Each event also goes to the run's live progress, when it shows one.
    """

    def __init__(self, progress: RunProgress | None = None) -> None:
        self._counts: dict[str, _Counts] = {}
        self._progress = progress

    def started(self, task_name: str) -> None:
        """A node's body is about to run (its channels' slots held), once its runner has room for it."""
        if self._progress is not None:
            self._progress.started(task_name)

    def attempt(self, task_name: str) -> Work | None:
        """Return what an attempt of a body of `task_name` reports its beginning to (None: no progress shown)."""
        return None if self._progress is None else Work(self._progress, task_name)

    def ran(self, task_name: str, duration: float) -> None:
        """A node's body returned a result after `duration` seconds (its last attempt)."""
        counts = self._of(task_name)
        counts.run += 1
        counts.durations.append(duration)
        if self._progress is not None:
            self._progress.ran(task_name)

    def reused(self, task_name: str, count: int = 1) -> None:
        """`count` nodes of `task_name` were fresh in the cache, or computed by another run.

        Settling counts its fresh nodes per class in one call each: a call per node was a
        tenth of a warm run's time on the loop.
        """
        self._of(task_name).reused += count
        if self._progress is not None:
            self._progress.reused(task_name, count)

    def unreadable(self, task_name: str) -> None:
        """A node counted as `reused` turned out to have a result that cannot be read: it runs again."""
        self._of(task_name).reused -= 1
        if self._progress is not None:
            self._progress.unreadable(task_name)

    def retried(self, task_name: str) -> None:
        """A node's body failed (after its attempt began) and will be tried again."""
        self._of(task_name).retried += 1
        if self._progress is not None:
            self._progress.retried(task_name)

    def failed(self, task_name: str) -> None:
        """A node failed (after `started`)."""
        self._of(task_name).failed += 1
        if self._progress is not None:
            self._progress.failed(task_name)

    def skipped(self, task_name: str) -> None:
        """A node was not run: an upstream failed, or the run was cancelled."""
        self._of(task_name).skipped += 1

    def totals(self) -> dict[str, int]:
        """Return the counts so far summed over the classes: run, reused, failed, retried, skipped."""
        out: dict[str, int] = dict.fromkeys(("run", "reused", "failed", "retried", "skipped"), 0)
        for c in self._counts.values():
            out["run"] += c.run
            out["reused"] += c.reused
            out["failed"] += c.failed
            out["retried"] += c.retried
            out["skipped"] += c.skipped
        return out

    def freeze(self, elapsed: float) -> RunStats:
        """Return the counts so far as `RunStats`, with the run's wall time."""
        from ._stats import ClassStats, RunStats  # here: a plain run() never makes their dataclasses

        return RunStats(
            {
                name: ClassStats(c.run, c.reused, c.failed, c.retried, c.skipped, tuple(c.durations))
                for name, c in sorted(self._counts.items())
            },
            elapsed,
        )

    def _of(self, task_name: str) -> _Counts:
        counts = self._counts.get(task_name)
        if counts is None:
            counts = self._counts[task_name] = _Counts()
        return counts
