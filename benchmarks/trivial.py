"""The trivial body the latency benchmarks time (`places.py`, `startup.py`), awaited one after another.

It imports asyncflow alone, so a job's worker that imports it by name pays for nothing more.
"""

from __future__ import annotations

import time

from asyncflow import Task

CHANNEL = "trivial"


class Trivial(Task, channel=CHANNEL):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i


class Latency(Task):
    """Run `n` trivial bodies one after another; return the seconds each took."""

    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> list[float]:
        times: list[float] = []
        for i in range(self.n):
            t0 = time.perf_counter()
            await Trivial(i).run()
            times.append(time.perf_counter() - t0)
        return times
