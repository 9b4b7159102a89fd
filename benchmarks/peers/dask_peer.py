"""Dask running W1-W4 on its threaded scheduler; see ``common.py``.

Run as ``python benchmarks/peers/dask_peer.py --workload W2 --size 1000 --cache-dir DIR
[--variant delayed|raw]`` in a virtualenv made from ``dask.txt``.

- ``delayed`` (default): `dask.delayed` functions building the same DAG (W1's shared
  nodes built once through a dict memo, W2's and W4's gathering node taking a list of
  the leaves), computed with ``dask.compute(root, scheduler="threads")``.
- ``raw``: the same DAG as a plain task-graph dict (``{key: (func, *args)}``), run with
  ``dask.threaded.get``, Dask's raw threaded scheduler, with no delayed objects.

Dask keeps no results between runs, so there is no warm run; ``--cache-dir`` is
accepted and ignored. W4's limit is ``num_workers=20`` on the threaded scheduler: a pool
of 20 threads, the only concurrency limit that scheduler has.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from importlib.metadata import version

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import dask  # noqa: E402
import dask.threaded  # noqa: E402
from dask import delayed  # noqa: E402

VARIANTS = ("delayed", "raw")
PEAK = common.Peak()
BODIES = itertools.count()  # next() on it is atomic under the GIL: counts bodies run


# --- the bodies ---------------------------------------------------------------------


def one() -> int:
    next(BODIES)
    return 1


def add(a: int, b: int) -> int:
    next(BODIES)
    return a + b


def leaf(i: int) -> int:
    next(BODIES)
    return i


def total(xs: list[int]) -> int:
    next(BODIES)
    return sum(xs)


def inc(x: int) -> int:
    next(BODIES)
    return x + 1


def sleepy(i: int) -> int:
    next(BODIES)
    with PEAK:
        time.sleep(common.W4_SLEEP)
    return i


# --- variant "delayed" --------------------------------------------------------------


def build_delayed(workload: str, size: int):
    if workload == "W1":
        memo: dict[tuple[int, int], object] = {}

        def choose(n: int, k: int):
            node = memo.get((n, k))
            if node is None:
                edge = not 0 < k < n
                node = delayed(one)() if edge else delayed(add)(choose(n - 1, k - 1), choose(n - 1, k))
                memo[(n, k)] = node
            return node

        return choose(size, size // 2)
    if workload == "W2":
        return delayed(total)([delayed(leaf)(i) for i in range(size)])
    if workload == "W3":
        node = delayed(inc)(0)  # Chain(1)
        for _ in range(2, size + 1):
            node = delayed(inc)(node)
        return node
    return delayed(total)([delayed(sleepy)(i) for i in range(size)])


def run_delayed(workload: str, size: int) -> int:
    root = build_delayed(workload, size)
    kwargs = {"num_workers": common.W4_LIMIT} if workload == "W4" else {}
    (result,) = dask.compute(root, scheduler="threads", **kwargs)
    return result


# --- variant "raw" ------------------------------------------------------------------


def build_raw(workload: str, size: int) -> tuple[dict, object]:
    if workload == "W1":
        dsk: dict = {}
        for n, k in common.choose_nodes(size, size // 2):
            dsk[("choose", n, k)] = (
                (add, ("choose", n - 1, k - 1), ("choose", n - 1, k)) if 0 < k < n else (one,)
            )
        return dsk, ("choose", size, size // 2)
    if workload == "W2":
        dsk = {("leaf", i): (leaf, i) for i in range(size)}
        dsk["sum"] = (total, [("leaf", i) for i in range(size)])
        return dsk, "sum"
    if workload == "W3":
        dsk = {("chain", 1): (inc, 0)}
        for i in range(2, size + 1):
            dsk[("chain", i)] = (inc, ("chain", i - 1))
        return dsk, ("chain", size)
    dsk = {("sleepy", i): (sleepy, i) for i in range(size)}
    dsk["sink"] = (total, [("sleepy", i) for i in range(size)])
    return dsk, "sink"


def run_raw(workload: str, size: int) -> int:
    dsk, root = build_raw(workload, size)
    kwargs = {"num_workers": common.W4_LIMIT} if workload == "W4" else {}
    return dask.threaded.get(dsk, root, **kwargs)


def main() -> None:
    args = common.parse(variants=VARIANTS)
    variant = args.variant or VARIANTS[0]
    run = run_delayed if variant == "delayed" else run_raw

    common.settle()
    start = time.perf_counter()
    result = run(args.workload, args.size)
    wall = time.perf_counter() - start

    notes = [f"variant {variant}"]
    if variant == "delayed":
        notes.append('dask.delayed + dask.compute(scheduler="threads")')
    else:
        notes.append("raw task-graph dict + dask.threaded.get")
    notes.append("no cache: Dask keeps no results between runs (--cache-dir ignored)")
    if args.workload == "W4":
        notes.append(
            f"limit: num_workers={common.W4_LIMIT} on the threaded scheduler (a thread pool; Dask's only limit there)"
        )
    executed = next(BODIES)  # bodies counted as they ran
    common.report(
        args,
        wall,
        result,
        versions={"dask": version("dask"), "python": sys.version.split()[0]},
        executed=executed,
        peak=PEAK.peak if args.workload == "W4" else None,
        notes="; ".join(notes),
    )


if __name__ == "__main__":
    main()
