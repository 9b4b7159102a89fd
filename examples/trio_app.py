"""The same kind of workflow, driven from a trio program (`trio.run`).

A fan-out of `Fetch` tasks on a rate-limited channel ("net"), gathered by `Summary`.
The first run is cut short by a trio cancel scope (a deadline): the `Fetch`
bodies that finished before the deadline stay in the cache, the rest are cancelled and
nothing half-written is stored. The second run completes, reusing what was kept.

    python examples/trio_app.py [CACHE_DIR]

prints one ``key=value`` line per fact, which `tests/test_trio_app.py` checks.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from asyncflow import CacheError, RequiresList, Task

N = 8  # Fetch nodes
LIMIT = 2  # at most this many Fetch bodies at once, on the "net" channel
ACTIVE = {"now": 0, "peak": 0}
# The first run's deadline, set when its first Fetch body starts: counted from the start
# of `run()`, it would include what the first run of a process imports, which a loaded
# machine can stretch past the whole fan-out's time.
FIRST_RUN = trio.CancelScope()


class Fetch(Task, channel="net"):
    """A slow body (0.1 s) on the rate-limited "net" channel."""

    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        if FIRST_RUN.deadline == float("inf"):
            FIRST_RUN.deadline = trio.current_time() + 0.25
        ACTIVE["now"] += 1
        ACTIVE["peak"] = max(ACTIVE["peak"], ACTIVE["now"])
        try:
            await trio.sleep(0.1)
        finally:
            ACTIVE["now"] -= 1
        return self.i * self.i


class Summary(Task):
    """Sums the squares computed by the Fetch fan-out."""

    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [Fetch(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)


async def cached(cache_dir: Path) -> list[int]:
    """Which Fetch nodes hold a result in the cache."""
    kept = []
    for i in range(N):
        try:
            await Fetch(i).result(cache_dir=cache_dir)
        except CacheError:
            continue
        kept.append(i)
    return kept


async def main(cache_dir: Path) -> None:
    limits = {"net": LIMIT}
    # 1. Cancelled by a trio cancel scope: with 8 bodies of 0.1 s, two at a time, the
    #    whole fan-out takes 0.4 s or more; the deadline, 0.25 s after the first body
    #    starts, falls in the middle of it.
    with FIRST_RUN as scope:
        await Summary(N).run(cache_dir=cache_dir, rate_limits=limits)
    kept = await cached(cache_dir)
    print(f"cancelled={scope.cancelled_caught}")
    print(f"kept={','.join(map(str, kept))}")
    print(f"active_after_cancel={ACTIVE['now']}")
    print(f"peak_first={ACTIVE['peak']}")
    try:
        await Summary(N).result(cache_dir=cache_dir)
        print("summary_cached_after_cancel=True")
    except CacheError:
        print("summary_cached_after_cancel=False")

    # 2. Run to the end: the kept Fetch results are reused, the others run.
    ACTIVE["peak"] = 0
    value, stats = await Summary(N).run_with_stats(cache_dir=cache_dir, rate_limits=limits)
    print(f"value={value}")
    print(f"peak_second={ACTIVE['peak']}")
    print(f"fetch_run={stats[Fetch.task_name].run}")
    print(f"fetch_reused={stats[Fetch.task_name].reused}")
    print(f"summary_run={stats[Summary.task_name].run}")

    # 3. Everything is fresh now.
    _, stats = await Summary(N).run_with_stats(cache_dir=cache_dir, rate_limits=limits)
    print(f"third_run={stats.run}")
    print(f"third_reused={stats.reused}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        trio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(main, Path(tmp) / "cache")
