"""Run statistics: the frozen dataclasses `run_with_stats` returns.

Made only when asked for (`_tally.StatsBuilder.freeze`): making a dataclass runs `exec`, and a
plain `run()` spares these two their milliseconds. Counting goes on in `_tally.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ClassStats:
    """What happened to the nodes of one task class in one run.

    Attributes:
        run: nodes whose body ran to a result.
        reused: nodes found fresh in the cache (or computed by a concurrent run).
        failed: nodes whose body failed.
        retried: extra attempts made after a failure (``retries=``).
        skipped: nodes not run because an upstream failed or the run was cancelled.
        durations: seconds each successful body took, in completion order.
    """

    run: int = 0
    reused: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    durations: tuple[float, ...] = ()

    @property
    def total(self) -> int:
        """Nodes of this class in the graph."""
        return self.run + self.reused + self.failed + self.skipped

    @property
    def total_duration(self) -> float:
        """Seconds spent in the bodies of this class, summed."""
        return sum(self.durations)


@dataclass(frozen=True)
class RunStats(Mapping[str, ClassStats]):
    """Per task class (by `task_name`) statistics of one run, and its wall time."""

    classes: Mapping[str, ClassStats]
    elapsed: float = 0.0

    def __getitem__(self, task_name: str) -> ClassStats:
        return self.classes[task_name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def _sum(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.classes.values())

    @property
    def run(self) -> int:
        """Nodes run, over all classes."""
        return self._sum("run")

    @property
    def reused(self) -> int:
        """Nodes reused from the cache, over all classes."""
        return self._sum("reused")

    @property
    def failed(self) -> int:
        """Nodes failed, over all classes."""
        return self._sum("failed")

    @property
    def retried(self) -> int:
        """Extra attempts after a failure, over all classes."""
        return self._sum("retried")

    @property
    def skipped(self) -> int:
        """Nodes not run (an upstream failed, or the run was cancelled), over all classes."""
        return self._sum("skipped")
