# pyright: basic
# (user-style code: a task class written as the README shows it, without type arguments)
"""The binomial DAG: ``Choose(n, k) = Choose(n-1, k-1) + Choose(n-1, k)``, 440 nodes for (40, 20).

Run it twice to see the cache at work::

    python -m asyncflow.examples.binomial            # Choose(40, 20), cold then warm
    python -m asyncflow.examples.binomial 30 15 --cache-dir /tmp/af
"""

from __future__ import annotations

import argparse
import time

import anyio

from asyncflow import Const, Req, Requires, Task, infer_task_type


@infer_task_type
class Choose(Task):
    """Binomial coefficient."""

    prev1: Requires[int]  # annotation alone, or `= Req()`, or both
    prev2: Requires[int] = Req()

    def build_task(self, n: int, k: int) -> None:
        if 0 < k < n:
            self.prev1 = Choose(n - 1, k - 1)
            self.prev2 = Choose(n - 1, k)
        elif k == 0 or k == n:
            self.prev1 = Const(0)  # a requirement can be a ready value
            self.prev2 = Const(1)
        else:
            raise ValueError(f"{(n, k)}")

    async def run_task(self) -> int:
        return self.prev1 + self.prev2  # reading a requirement gives its result


async def main(n: int, k: int, cache_dir: str) -> None:
    for attempt in ("first run", "second run"):
        started = time.perf_counter()
        value, stats = await Choose(n, k).run_with_stats(cache_dir=cache_dir)
        elapsed = time.perf_counter() - started
        print(  # noqa: T201 - an example's output
            f"{attempt}: Choose({n}, {k}) = {value}  "
            f"({stats.run} run, {stats.reused} from cache, {elapsed:.3f} s)"
        )


def cli() -> None:
    """Parse the command line and run `main`."""
    parser = argparse.ArgumentParser(description="Run the binomial DAG twice.")
    parser.add_argument("n", type=int, nargs="?", default=40)
    parser.add_argument("k", type=int, nargs="?", default=20)
    parser.add_argument("--cache-dir", default=".cache", help="cache directory (default ./.cache)")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    anyio.run(main, args.n, args.k, args.cache_dir, backend=args.backend)


if __name__ == "__main__":
    cli()
