"""What every peer script shares: its arguments, the workloads' shape and answer, the report.

A peer script (``benchmarks/peers/<peer>_peer.py``) runs in the peer's own virtualenv,
never imports asyncflow, and runs one workload once::

    python benchmarks/peers/dask_peer.py --workload W2 --size 10000 --cache-dir DIR [--variant V]

The harness calls it on an empty ``DIR`` (cold), then again on the same ``DIR`` in a
fresh process (warm). Everything the peer persists (results, its database, its home
directory) must live under ``DIR``, so it is measured and thrown away with it.

The script imports everything first, calls `settle`, then times, with
``time.perf_counter()``, what a user's program would do to get the root's result: start
the engine if each run needs that (a DataFlowKernel, a flow run), build and run the DAG,
and shut the engine down if that is when results become durable. It ends with `report`,
which prints one JSON line.

The DAGs (the same as asyncflow's ``benchmarks/workloads.py``):

- W1 ``Choose(n, n // 2)``: ``Choose(n, k) = Choose(n-1, k-1) + Choose(n-1, k)`` for
  ``0 < k < n``; 1 at the edges (``k == 0`` or ``k == n``), which are nodes too. Shared
  nodes are built and run once. ``Choose(40, 20)`` has 440 nodes.
- W2 ``Sum(n)``: ``n`` trivial leaves, ``Leaf(i)`` returns ``i``, and one node summing
  all of them: ``n + 1`` nodes, answer ``n * (n - 1) / 2``.
- W3 ``Chain(n)``: ``Chain(1)`` returns 1, ``Chain(i)`` returns ``Chain(i - 1) + 1``:
  ``n`` nodes, answer ``n``.
- W4 ``n`` bodies that each sleep 0.05 s (``time.sleep`` in a thread or ``await
  anyio.sleep``/``asyncio.sleep``), at most 20 at once, by whatever limit the peer offers
  (its rate limit or concurrency limit; a pool of 20 workers if that is all it has), and
  one node gathering them: ``n + 1`` nodes; answer ``n * (n - 1) / 2`` (sleeper ``i``
  returns ``i``). Record the peak number of bodies running at once with `Peak`.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any

W4_SLEEP = 0.05
W4_LIMIT = 20


@dataclass(frozen=True)
class Args:
    workload: str  # "W1" .. "W4"
    size: int
    cache_dir: str
    variant: str | None


def parse(variants: tuple[str, ...] = ()) -> Args:
    """The command line every peer script takes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True, choices=["W1", "W2", "W3", "W4"])
    parser.add_argument("--size", required=True, type=int)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument(
        "--variant", choices=list(variants) or None, default=variants[0] if variants else None
    )
    ns = parser.parse_args()
    return Args(ns.workload, ns.size, ns.cache_dir, ns.variant)


def expected(workload: str, size: int) -> int:
    """The root's correct result."""
    if workload == "W1":
        from math import comb

        return comb(size, size // 2)
    if workload == "W3":
        return size
    return size * (size - 1) // 2


def nodes(workload: str, size: int) -> int:
    """How many nodes the DAG has (W1's shared nodes counted once)."""
    if workload == "W1":
        return len(choose_nodes(size, size // 2))
    if workload == "W3":
        return size
    return size + 1


@cache
def choose_nodes(n: int, k: int) -> frozenset[tuple[int, int]]:
    """Every ``(n, k)`` that ``Choose(n, k)`` reaches, itself included."""
    seen: set[tuple[int, int]] = set()
    todo = [(n, k)]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        a, b = node
        if 0 < b < a:
            todo += [(a - 1, b - 1), (a - 1, b)]
    return frozenset(seen)


def settle() -> None:
    """Collect garbage right before the timed part (every engine's child does, asyncflow's too).

    A new process has not yet run a full collection over what its imports made; the first
    one (10-30 ms) would otherwise land inside the timing of whichever engine allocates
    first, as it would not in a long-running program.
    """
    gc.collect()


class Peak:
    """Counts W4 bodies running at once (thread-safe); `peak` is the most seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.running -= 1


def report(
    args: Args,
    wall: float,
    result: Any,
    *,
    versions: dict[str, str],
    executed: int | None = None,
    peak: int | None = None,
    notes: str = "",
) -> None:
    """Print the one JSON line the harness reads (the last line of stdout).

    `executed`: how many bodies really ran in this run, when the script can tell (a warm
    run of a caching peer should say 0); `peak`: W4's peak concurrency; `notes`: anything
    a reader of the table must know (a limit that is a pool size, a setting changed).
    """
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    answer = {
        "wall": wall,
        "nodes": nodes(args.workload, args.size),
        "ok": result == expected(args.workload, args.size),
        "result": repr(result)[:200],
        "executed": executed,
        "peak": peak,
        "rss_kb": self_kib,
        "rss_children_kb": children_kib,
        "versions": versions,
        "notes": notes,
    }
    sys.stdout.flush()
    print(json.dumps(answer), flush=True)
