"""Run statistics: frozen dataclasses returned by `run_with_stats`, and their builder."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


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


@dataclass
class Counts:
    run: int = 0
    reused: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    durations: list[float] = field(default_factory=list[float])


class StatsBuilder:
    """Mutable counts kept by the scheduler while a run goes on."""

    def __init__(self) -> None:
        self._counts: dict[str, Counts] = {}

    def of(self, task_name: str) -> Counts:
        counts = self._counts.get(task_name)
        if counts is None:
            counts = self._counts[task_name] = Counts()
        return counts

    def freeze(self, elapsed: float) -> RunStats:
        return RunStats(
            {
                name: ClassStats(c.run, c.reused, c.failed, c.retried, c.skipped, tuple(c.durations))
                for name, c in sorted(self._counts.items())
            },
            elapsed,
        )
