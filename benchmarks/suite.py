"""What the harness measures: the workloads at their sizes, the engines, and one run in a child.

`Workload` is one of the DAGs W1 .. W4 at one size (`FULL`, `QUICK`: the runs' lists);
`Engine` is asyncflow, a floor of floor.py or a peer's script, with which workloads and
modes it runs (`ENGINES`, in the table's order). `child` is the child process's side of
one measurement of asyncflow or a floor: ``run.py --one`` calls it, it runs the workload
once in that process, times it and checks its answer (a peer's script does the same in
the peer's venv, see peers/common.py).
"""

from __future__ import annotations

import gc
import importlib
import resource
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Workload:
    kind: str  # W1 .. W4
    size: int

    @property
    def label(self) -> str:
        if self.kind == "W1":
            return f"W1 Choose({self.size}, {self.size // 2})"
        if self.kind == "W2":
            return f"W2 fan-out {self.size:,}"
        if self.kind == "W3":
            return f"W3 chain {self.size:,}"
        if self.kind == "W5":
            return f"W5 dynamic fan-out {self.size:,}"
        return f"W4 sleepy {self.size}"

    @property
    def has_floor(self) -> bool:
        """W2 and W3 as plain coroutines; W4 only as the anyio floor (floor.sleepy)."""
        return self.kind in ("W2", "W3", "W4")

    @property
    def cache_modes(self) -> tuple[str, ...]:
        """Cold, warm, and for the fan-out a rerun of the root alone over a warm cache."""
        return ("cold", "warm", "root-stale") if self.kind in ("W2", "W5") else ("cold", "warm")

    @property
    def first_run_modes(self) -> tuple[str, ...]:
        """Cold and warm again, each as the first run of a fresh process (see `child`).

        The largest sizes run in this view alone: the other adds nothing there but minutes.
        """
        return () if self.kind == "W4" else FIRST_RUN_MODES


# A first-run mode times `await root.run()` as a user meets it: the first run in a fresh
# process, with the modules it imports on first use and the garbage collector as it comes
# (see `child`); the plain modes time a long-lived process's run, after both.
FIRST_RUN = "first "
FIRST_RUN_MODES = ("first cold", "first warm")
MODES = ("cold", "warm", "root-stale", *FIRST_RUN_MODES)


def base_mode(mode: str) -> str:
    """`mode` without its view: ``first cold`` is a cold run."""
    return mode.removeprefix(FIRST_RUN)


FULL = [
    Workload("W1", 40),
    Workload("W2", 1_000),
    Workload("W2", 10_000),
    Workload("W2", 100_000),
    Workload("W3", 1_000),
    Workload("W3", 10_000),
    Workload("W4", 200),
    Workload("W5", 1_000),
    Workload("W5", 10_000),
]
# `--large`: the sizes of issue 16, asyncflow alone (a floor would hold a million tasks).
LARGE = [Workload("W2", 1_000_000), Workload("W3", 100_000)]
QUICK = [
    Workload("W1", 20),
    Workload("W2", 1_000),
    Workload("W2", 10_000),
    Workload("W3", 100),
    Workload("W3", 1_000),
    Workload("W4", 200),
    Workload("W5", 10_000),
]
# The largest size of each workload that peers run (asyncflow and the floors run all; W5
# is asyncflow's alone: the peers' scripts have no dynamic fan-out).
PEER_MAX = {"W1": 40, "W2": 10_000, "W3": 1_000, "W4": 200}


@dataclass(frozen=True)
class Engine:
    """What is measured: asyncflow, a floor of floor.py, or a peer's script (`peer`)."""

    name: str
    peer: str | None = None  # peers/<peer>_peer.py, installed from peers/<peer>.txt
    variant: str | None = None  # the peer script's --variant; None: its default
    caches: bool = True  # False: runs cold only
    default: bool = True  # False: only when named in --engines

    def runs(self, w: Workload) -> bool:
        """Whether this engine runs workload `w` at its size."""
        if w in LARGE:
            return self.name == "asyncflow"
        if self.name == "naive-cache":  # 100,000 files would cost minutes and not say more
            return w.kind in ("W2", "W3") and w.size <= 10_000
        if self.name == "native":
            return w.kind in ("W2", "W3")
        if self.name in FLOORS:
            return w.has_floor
        if self.peer:
            return w.kind in PEER_MAX and w.size <= PEER_MAX[w.kind]
        return True

    def modes(self, w: Workload) -> tuple[str, ...]:
        """The steps of one repeat, in order, on one fresh cache directory."""
        if self.name == "asyncflow":
            return w.first_run_modes if w in LARGE else w.cache_modes + w.first_run_modes
        return ("cold", "warm") if self.caches else ("cold",)


FLOORS = ("floor", "native", "naive-cache")
ENGINES = [
    Engine("asyncflow"),
    Engine("floor", caches=False),
    Engine("native", caches=False),
    Engine("naive-cache"),
    Engine("taskproc", "taskproc"),
    Engine("taskproc-thread", "taskproc", "thread", default=False),
    Engine("dask-delayed", "dask", "delayed", caches=False),
    Engine("dask-raw", "dask", "raw", caches=False),
    # Parsl at its fastest: without the DEBUG log its default configuration writes.
    Engine("parsl", "parsl", "nolog"),
    Engine("parsl-log", "parsl", "default", default=False),
    Engine("prefect", "prefect"),
    Engine("prefect-async", "prefect", "async", default=False),
    Engine("checkpoint-tool", "checkpoint_tool"),
]
PEER_NAMES = list(dict.fromkeys(e.peer for e in ENGINES if e.peer))


# The child: one measurement of asyncflow or a floor in a fresh process.


def _expected(kind: str, size: int) -> Any:
    """The root's answer: as for the peers (peers/common.py), but W4's sink returns None."""
    from peers import common

    return None if kind == "W4" else common.expected(kind, size)


def child(
    kind: str, size: int, engine: str, mode: str, cache_dir: str | None, backend: str
) -> dict[str, Any]:
    """Run one workload once in this process and return what was measured."""
    import anyio
    import workloads

    # floor.py imports pickle, which a first run of asyncflow must pay for itself.
    floor: Any = importlib.import_module("floor") if engine in FLOORS else None
    first_run = mode.startswith(FIRST_RUN)
    mode = base_mode(mode)
    if not first_run:
        # Load what `run_with_stats` imports on first use, so the timing is the run's work,
        # not module loading (a long-lived process has paid for it already).
        importlib.import_module("anyio.to_thread")
        importlib.import_module("asyncflow._cache.store")
        importlib.import_module("asyncflow._scheduler")
        importlib.import_module("asyncflow._stats")  # made when the run ends, for run_with_stats

    out: dict[str, Any] = {}

    async def main() -> None:
        if engine in FLOORS:
            gc.collect()  # as every child does before its timing (see peers/common.py `settle`)
            t0 = time.perf_counter()
            if engine == "naive-cache":
                assert cache_dir is not None
                value, nodes, run = await floor.run_naive_cache(kind, size, cache_dir, warm=mode == "warm")
            else:
                value, nodes = await floor.run_floor(kind, size, backend if engine == "native" else None)
                run = nodes
            out["wall"] = time.perf_counter() - t0
            out.update(nodes=nodes, run=run, reused=nodes - run)
        else:
            options: dict[str, Any] = {"cache_dir": cache_dir}
            if kind == "W1":
                root: Any = workloads.Choose(size, size // 2)
            elif kind == "W2":
                root = workloads.Sum(size)
            elif kind == "W3":
                root = workloads.Chain(size)
            elif kind == "W5":
                root = workloads.Gathered(size)
            else:
                root = workloads.SleepySink(size)
                options["rate_limits"] = {"w4": workloads.W4_LIMIT}
            if mode == "root-stale":  # a warm cache with only the root's result removed
                await root.clear(cache_dir=cache_dir)
            if not first_run:  # else the collector runs as it would have: its cost is the user's
                gc.collect()
            t0 = time.perf_counter()
            value, stats = await root.run_with_stats(**options)
            out["wall"] = time.perf_counter() - t0
            out.update(nodes=stats.run + stats.reused + stats.failed, run=stats.run, reused=stats.reused)
            out["stats_elapsed"] = stats.elapsed
        out["ok"] = value == _expected(kind, size)
        out["peak"] = floor.PEAK if engine in FLOORS else workloads.PEAK

    anyio.run(main, backend=backend)
    out["rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return out
