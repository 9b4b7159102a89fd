"""Benchmark workloads: module-level task classes, so their keys and source hashes are stable.

- W1 `Choose(n, k)`: the binomial DAG (Choose(40, 20) has 440 nodes, many shared).
- W2 `Sum(n)`: a fan-out of ``n`` trivial async leaves `Leaf(i)` gathered by one node.
- W3 `Chain(n)`: a chain ``n`` deep; `Chain(i)` requires `Chain(i - 1)`.
- W4 `SleepySink(n)`: ``n`` `Sleepy(i)` bodies that each sleep 0.05 s on channel ``"w4"``;
  run with ``rate_limits={"w4": 20}``. `PEAK` records the highest concurrency seen.
- W5 `Gathered(n)`: W2's fan-out found while it runs: one body awaits `Leaf(0)` ...
  `Leaf(n - 1)` with `asyncflow.gather` (a dynamic fan-out), compared with W2's static one.
"""

from __future__ import annotations

import anyio

import asyncflow
from asyncflow import Const, Requires, RequiresList, SinkTask, Task

# W1
from asyncflow.examples.binomial import Choose

__all__ = ["Chain", "Choose", "Gathered", "Leaf", "Sleepy", "SleepySink", "Sum"]


# W2


class Leaf(Task):
    """A trivial async leaf returning its argument."""

    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        return self.i


class Sum(Task):
    """Gathers `Leaf(0)` ... `Leaf(n - 1)` and returns their sum."""

    leaves: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.leaves = [Leaf(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.leaves)


# W3


class Chain(Task):
    """`Chain(n)` is ``n`` nodes deep and returns ``n``; Chain(1) reads Const(0)."""

    prev: Requires[int]

    def build_task(self, i: int) -> None:
        self.prev = Chain(i - 1) if i > 1 else Const(0)

    async def run_task(self) -> int:
        return self.prev + 1


# W4

W4_SLEEP = 0.05
W4_LIMIT = 20

RUNNING = 0  # bodies of `Sleepy` running now (module-level: one run per process)
PEAK = 0  # the most `Sleepy` bodies seen running at once


class Sleepy(Task, channel="w4"):
    """Sleeps `W4_SLEEP` seconds on channel ``"w4"`` and counts how many run at once."""

    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        global RUNNING, PEAK
        RUNNING += 1
        PEAK = max(PEAK, RUNNING)
        try:
            await anyio.sleep(W4_SLEEP)
        finally:
            RUNNING -= 1
        return self.i


class SleepySink(SinkTask):
    """Gathers `Sleepy(0)` ... `Sleepy(n - 1)`."""

    sleepers: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.sleepers = [Sleepy(i) for i in range(n)]


# W5


class Gathered(Task):
    """Awaits `Leaf(0)` ... `Leaf(n - 1)` from its body (they join its run) and returns their sum."""

    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> int:
        return sum(await asyncflow.gather(*(Leaf(i) for i in range(self.n))))
