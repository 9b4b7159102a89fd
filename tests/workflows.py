"""Workflows shared by the tests and by the processes they start and kill.

Task classes live here, at module level, so a subprocess (``python -m tests.workflows``)
and the test process build the very same nodes (same `task_name`, same keys) and
share one cache. Every body records its execution: in `executions` (this process)
and, when ``$ASYNCFLOW_TEST_LOG`` names a file, as one line ``<node>\\t<pid>`` appended
with one ``write`` to an ``O_APPEND`` file, so counting lines counts body executions
across processes, even those killed with SIGKILL.

Run as a script::

    python -m tests.workflows CACHE_DIR {crash,fan,gather,stamp} N [--delay S] [--start S] [--rate-leaf K] [--backend B]

prints one JSON line ``{"result": ..., "run": ..., "reused": ..., "pid": ...}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import textwrap
import zlib
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

import asyncflow
from asyncflow import Requires, RequiresList, Task

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from asyncflow import RunStats

LOG_ENV = "ASYNCFLOW_TEST_LOG"
REPO_ROOT = Path(__file__).resolve().parent.parent

executions: Counter[str] = Counter()
"""Body executions in this process, by node label."""

on_start: list[Callable[[str], object]] = []
"""Called with the node label when a body starts, in the body's thread (tests hook events here)."""


def record_execution(label: str) -> None:
    """Count one body execution of `label`, in memory and in the log file if any."""
    executions[label] += 1
    for hook in on_start:
        hook(label)
    path = os.environ.get(LOG_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{label}\t{os.getpid()}\n".encode())
        finally:
            os.close(fd)


def read_log(path: Path) -> list[str]:
    """Return the node labels of a log file, one per body execution (none if absent)."""
    if not path.exists():
        return []
    return [line.split("\t")[0] for line in path.read_text().splitlines()]


def log_pids(path: Path) -> dict[str, int]:
    """Return which process (the last one) ran each node of a log file."""
    rows = (line.split("\t") for line in path.read_text().splitlines())
    return {label: int(pid) for label, pid in rows}


def checksum(value: object) -> int:
    """Fold a leaf's result into an int, so groups stay small."""
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return zlib.crc32(value)
    if isinstance(value, list):
        return sum(value)
    raise TypeError(f"unexpected leaf result {type(value)}")


# Leaves: small results (inline in SQLite), large ones (files), compressed ones.

BIG = 80 * 1024  # above the 64 KiB that the index keeps inline


class Leaf(Task, channel="leaf"):
    """A small int result, kept in the index."""

    def build_task(self, i: int, delay: float) -> None:
        self.i = i
        self.delay = delay

    async def run_task(self) -> int:
        record_execution(repr(self))
        await anyio.sleep(self.delay)
        return self.i * self.i

    @staticmethod
    def expected(i: int) -> int:
        return i * i


class BigLeaf(Task, channel="leaf"):
    """Random bytes above the inline limit, stored raw in a result file."""

    def build_task(self, i: int, delay: float) -> None:
        self.i = i
        self.delay = delay

    async def run_task(self) -> bytes:
        record_execution(repr(self))
        await anyio.sleep(self.delay)
        return self.expected(self.i)

    @staticmethod
    def expected(i: int) -> bytes:
        return random.Random(i).randbytes(BIG + i)


class NoisyLeaf(Task, channel="leaf", compress_level=1):
    """Incompressible bytes at compress_level=1: a gzip result file."""

    def build_task(self, i: int, delay: float) -> None:
        self.i = i
        self.delay = delay

    async def run_task(self) -> bytes:
        record_execution(repr(self))
        await anyio.sleep(self.delay)
        return self.expected(self.i)

    @staticmethod
    def expected(i: int) -> bytes:
        return random.Random(-i).randbytes(BIG + 2 * i)


class PackedLeaf(Task, channel="leaf", compress_level=9):
    """A list pickling to well over 64 KiB that gzip shrinks (a sync body, in a thread)."""

    def build_task(self, i: int, delay: float) -> None:
        self.i = i
        self.delay = delay

    def run_task(self) -> list[int]:
        record_execution(repr(self))
        return self.expected(self.i)

    @staticmethod
    def expected(i: int) -> list[int]:
        return [i % 7] * 40_000


LEAF_KINDS: tuple[type[Task[Any, Any]], ...] = (BigLeaf, Leaf, NoisyLeaf, Leaf, PackedLeaf, Leaf, Leaf)


def leaf(i: int, delay: float) -> Task[Any, Any]:
    """Return the i-th leaf of a crash workflow (1 in 7 big raw, noisy gzip, packed gzip)."""
    return LEAF_KINDS[i % len(LEAF_KINDS)](i, delay)


def leaf_expected(i: int) -> object:
    return LEAF_KINDS[i % len(LEAF_KINDS)].expected(i)  # type: ignore[attr-defined]


# Inner nodes.


class Group(Task):
    """Checksums a slice of leaves (a sync body, run in a worker thread)."""

    parts: RequiresList[object]

    def build_task(self, g: int, size: int, delay: float) -> None:
        self.parts = [leaf(i, delay) for i in range(g * size, (g + 1) * size)]

    def run_task(self) -> int:
        record_execution(repr(self))
        return sum(checksum(p) for p in self.parts)


class Chain(Task):
    """``Chain(k) = Chain(k - 1) + k + Group(k % groups)``: a deep serial spine."""

    prev: Requires[int]
    side: Requires[int]

    def build_task(self, k: int, groups: int, size: int, delay: float) -> None:
        self.k = k
        self.prev = Chain(k - 1, groups, size, delay) if k > 0 else Group(0, size, delay)
        self.side = Group(k % groups, size, delay)

    async def run_task(self) -> int:
        record_execution(repr(self))
        return (self.prev + self.k + self.side) % (1 << 61)


class Top(Task):
    """Joins every group and the end of the chain."""

    groups: RequiresList[int]
    chain: Requires[int]

    def build_task(self, groups: int, size: int, depth: int, delay: float) -> None:
        self.groups = [Group(g, size, delay) for g in range(groups)]
        self.chain = Chain(depth - 1, groups, size, delay)

    async def run_task(self) -> dict[str, int]:
        record_execution(repr(self))
        return {"groups": sum(self.groups), "chain": self.chain}


def crash_workflow(n: int, delay: float = 0.0) -> Top:
    """Return the root of a workflow of `n` leaves (20 per group) and a chain of n // 4."""
    size = 20
    return Top(n // size, size, n // 4, delay)


def crash_nodes(n: int, delay: float = 0.0) -> list[tuple[Task[Any, Any], object]]:
    """Return every node of `crash_workflow(n, delay)` with its expected result."""
    size = 20
    groups = n // size
    depth = n // 4
    out: list[tuple[Task[Any, Any], object]] = [(leaf(i, delay), leaf_expected(i)) for i in range(n)]
    group_values = [
        sum(checksum(leaf_expected(i)) for i in range(g * size, (g + 1) * size)) for g in range(groups)
    ]
    out += [(Group(g, size, delay), v) for g, v in enumerate(group_values)]
    chain = group_values[0]
    for k in range(depth):
        chain = (chain + k + group_values[k % groups]) % (1 << 61)
        out.append((Chain(k, groups, size, delay), chain))
    top = {"groups": sum(group_values), "chain": chain}
    out.append((Top(groups, size, depth, delay), top))
    return out


# A fan-out of sleepers, for single-flight across runs and processes.


class Sleeper(Task, channel="leaf"):
    def build_task(self, i: int, delay: float) -> None:
        self.i = i
        self.delay = delay

    async def run_task(self) -> int:
        record_execution(repr(self))
        await anyio.sleep(self.delay)
        return self.i * self.i


class Pair(Task):
    left: Requires[int]
    right: Requires[int]

    def build_task(self, j: int, delay: float) -> None:
        self.left = Sleeper(2 * j, delay)
        self.right = Sleeper(2 * j + 1, delay)

    async def run_task(self) -> int:
        record_execution(repr(self))
        return self.left + self.right


class FanSum(Task):
    """Sums ``i * i`` over the sleepers of pairs ``start..stop-1``."""

    pairs: RequiresList[int]

    def build_task(self, start: int, stop: int, delay: float) -> None:
        self.pairs = [Pair(j, delay) for j in range(start, stop)]

    async def run_task(self) -> int:
        record_execution(repr(self))
        return sum(self.pairs)

    @staticmethod
    def expected(start: int, stop: int) -> int:
        return sum(i * i for i in range(2 * start, 2 * stop))


def fan_workflow(n: int, delay: float, start: int = 0) -> FanSum:
    """Return a sum over pairs ``start..n-1`` of sleepers (2 sleepers per pair, 1 sum)."""
    return FanSum(start, n, delay)


def fan_nodes(start: int, stop: int, delay: float) -> list[Task[Any, Any]]:
    """Return every node of ``FanSum(start, stop, delay)``."""
    nodes: list[Task[Any, Any]] = [Sleeper(i, delay) for i in range(2 * start, 2 * stop)]
    nodes += [Pair(j, delay) for j in range(start, stop)]
    nodes.append(FanSum(start, stop, delay))
    return nodes


# A body awaiting sleepers it finds as it runs (they join its run), for single flight
# of such nodes across processes.


class Gathered(Task):
    """Awaits the sleepers ``start..stop-1`` from its body and returns their results."""

    def build_task(self, start: int, stop: int, delay: float) -> None:
        self.start = start
        self.stop = stop
        self.delay = delay

    async def run_task(self) -> list[int]:
        values = await asyncflow.gather(*(Sleeper(i, self.delay) for i in range(self.start, self.stop)))
        # Only now: the gather fingerprints Sleeper, whose code reads `executions`, hashed
        # as it is then; recorded before, each process's parent would make it differ.
        record_execution(repr(self))
        return values

    @staticmethod
    def expected(start: int, stop: int) -> list[int]:
        return [i * i for i in range(start, stop)]


# A node whose every run gives another value, for a holder paused past its lease.

READY_ENV = "ASYNCFLOW_TEST_READY"
PAUSE = 2.0  # seconds the body waits after saying it runs, for a test to stop the process


class Token(Task):
    """A value no other run repeats (pid and random bytes), above the inline limit: a file."""

    async def run_task(self) -> dict[str, object]:
        record_execution(repr(self))
        ready = os.environ.get(READY_ENV)
        if ready:  # say that the body runs, and give the test time to stop this process
            await anyio.Path(ready).touch()
            await anyio.sleep(PAUSE)
        return {"token": f"{os.getpid()}-{os.urandom(4).hex()}", "pad": os.urandom(BIG)}


class Stamp(Task):
    """Depends on `Token`: what a dependent of a node computed twice would see."""

    token: Requires[dict[str, object]]

    def build_task(self) -> None:
        self.token = Token()

    async def run_task(self) -> str:
        record_execution(repr(self))
        return str(self.token["token"])


# Helpers for the test modules.


def runs(stats: RunStats, cls: type[Task[Any, Any]]) -> tuple[int, int]:
    """(run, reused) of one class in a run."""
    s = stats[cls.task_name]
    return s.run, s.reused


def load_taskfile(path: Path, source: str) -> ModuleType:
    """Write `source` (dedented) to `path` and import it as a new module, as an edited file would be."""
    path.write_text(textwrap.dedent(source))
    name = f"af_src_{abs(hash((str(path), source)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


TASKFILE_TEMPLATE = """
from asyncflow import Task, Requires

class Leaf(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        return self.i {leaf_op}

class Root(Task):
    leaf: Requires[int]

    def build_task(self) -> None:
        self.leaf = Leaf(3)  # {comment}

    async def run_task(self) -> int:
        return self.leaf * 10
"""
"""A taskfile for `load_taskfile`: Root needs Leaf(3); `leaf_op` and `comment` are what an edit changes."""


# The command line the tests start.


def script_command(cache_dir: Path, *args: str) -> list[str]:
    """Return the argv that runs ``main(cache_dir, *args)`` in a new Python (cwd: `REPO_ROOT`)."""
    return [sys.executable, "-m", "tests.workflows", str(cache_dir), *args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.workflows")
    parser.add_argument("cache_dir")
    parser.add_argument("workflow", choices=["crash", "fan", "gather", "stamp"])
    parser.add_argument("n", type=int)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--start", type=int, default=0, help="first pair (fan) or sleeper (gather)")
    parser.add_argument("--rate-leaf", type=int, default=0)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    if args.workflow == "crash":
        root: Task[Any, Any] = crash_workflow(args.n, args.delay)
    elif args.workflow == "stamp":
        root = Stamp()
    elif args.workflow == "gather":
        root = Gathered(args.start, args.n, args.delay)
    else:
        root = fan_workflow(args.n, args.delay, args.start)
    limits = {"leaf": args.rate_leaf} if args.rate_leaf else {}
    run = partial(root.run_with_stats, cache_dir=args.cache_dir, rate_limits=limits)
    result, stats = anyio.run(run, backend=args.backend)
    out = {"result": result, "run": stats.run, "reused": stats.reused, "pid": os.getpid()}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    # Under `-m` this file is `__main__`; import it by name so the task classes are
    # `tests.workflows.*`, the names the test process gives them.
    from tests.workflows import main as _main

    _main()
