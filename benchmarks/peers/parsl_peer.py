"""Parsl peer: the four workloads as ``@python_app(cache=True)`` apps on a ThreadPoolExecutor.

Run (in the venv made from ``parsl.txt``)::

    python benchmarks/peers/parsl_peer.py --workload W2 --size 1000 --cache-dir DIR [--variant nolog]

Dependencies are AppFutures passed as arguments (or in ``inputs=[...]``): Parsl waits for
them and hands the app their results. Results persist through Parsl's checkpointing:
``BasicMemoizer(checkpoint_mode="dfk_exit")`` writes every cached result of the run to
``DIR/runinfo/NNN/checkpoint/tasks.pkl`` when the DataFlowKernel is cleaned up, and the next
process loads the checkpoints of every earlier run (``parsl.utils.get_all_checkpoints``),
so its apps are answered from the memo table without running their bodies.

Timed: ``parsl.load(config)`` (DataFlowKernel start), building the DAG, the root's
``.result()``, and ``dfk.cleanup()`` (when the ``dfk_exit`` checkpoint is written).

Variants: ``default`` keeps Parsl's default logging (a DEBUG ``parsl.log`` in the run
directory, what a user gets out of the box); ``nolog`` sets ``initialize_logging=False``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import parsl
from common import W4_LIMIT, W4_SLEEP, Peak, parse, report, settle
from parsl import python_app
from parsl.config import Config
from parsl.dataflow.memoization import BasicMemoizer
from parsl.executors.threads import ThreadPoolExecutor
from parsl.utils import get_all_checkpoints

# Parsl's own default for ThreadPoolExecutor(max_threads=...) is 2 (also this machine's
# CPU count); W4 uses W4_LIMIT threads, the only concurrency limit Parsl offers here.
MAX_THREADS = 2
CHECKPOINT_MODE = "dfk_exit"

_lock = threading.Lock()
EXECUTED = 0  # app bodies that really ran in this process
PEAK = Peak()


def _ran() -> None:
    global EXECUTED
    with _lock:
        EXECUTED += 1


# W1


@python_app(cache=True)
def choose(n: int, k: int, a: int = 0, b: int = 0) -> int:
    """Choose(n, k): 1 at the edges, else Choose(n-1, k-1) + Choose(n-1, k) (a and b)."""
    _ran()
    return 1 if k == 0 or k == n else a + b


# W2


@python_app(cache=True)
def leaf(i: int) -> int:
    _ran()
    return i


@python_app(cache=True)
def total(n: int, inputs: list = ()) -> int:  # type: ignore[assignment]
    _ran()
    return sum(inputs)


# W3


@python_app(cache=True)
def chain(i: int, prev: int) -> int:
    """Chain(i) = Chain(i - 1) + 1; Chain(1) gets the constant 0 as prev."""
    _ran()
    return prev + 1


# W4


@python_app(cache=True)
def sleepy(i: int) -> int:
    _ran()
    with PEAK:
        time.sleep(W4_SLEEP)
    return i


@python_app(cache=True)
def gather(n: int, inputs: list = ()) -> int:  # type: ignore[assignment]
    _ran()
    return sum(inputs)


def build(workload: str, size: int):
    """Submit the whole DAG; return the root's AppFuture."""
    if workload == "W1":
        memo: dict[tuple[int, int], object] = {}

        def node(n: int, k: int):
            # Iterative post-order so deep W1 sizes cannot hit Python's recursion limit.
            todo = [(n, k)]
            while todo:
                a, b = todo[-1]
                if (a, b) in memo:
                    todo.pop()
                    continue
                if 0 < b < a:
                    deps = [(a - 1, b - 1), (a - 1, b)]
                    missing = [d for d in deps if d not in memo]
                    if missing:
                        todo += missing
                        continue
                    memo[(a, b)] = choose(a, b, memo[deps[0]], memo[deps[1]])
                else:
                    memo[(a, b)] = choose(a, b)
                todo.pop()
            return memo[(n, k)]

        return node(size, size // 2)
    if workload == "W2":
        return total(size, inputs=[leaf(i) for i in range(size)])
    if workload == "W3":
        fut: object = 0
        for i in range(1, size + 1):
            fut = chain(i, fut)
        return fut
    if workload == "W4":
        return gather(size, inputs=[sleepy(i) for i in range(size)])
    raise ValueError(workload)


def main() -> None:
    args = parse(("default", "nolog"))
    run_dir = os.path.join(os.path.abspath(args.cache_dir), "runinfo")
    threads = W4_LIMIT if args.workload == "W4" else MAX_THREADS

    settle()
    t0 = time.perf_counter()
    config = Config(
        executors=[ThreadPoolExecutor(label="threads", max_threads=threads)],
        memoizer=BasicMemoizer(
            checkpoint_mode=CHECKPOINT_MODE,
            checkpoint_files=get_all_checkpoints(run_dir),
        ),
        run_dir=run_dir,
        usage_tracking=0,
        monitoring=None,
        strategy="none",
        initialize_logging=args.variant != "nolog",
    )
    dfk = parsl.load(config)
    t1 = time.perf_counter()
    root = build(args.workload, args.size)
    t2 = time.perf_counter()
    result = root.result()
    t3 = time.perf_counter()
    dfk.cleanup()
    t4 = time.perf_counter()

    notes = (
        f"parsl ThreadPoolExecutor(max_threads={threads})"
        + (
            " is the W4 limit (Parsl has no per-app concurrency limit)"
            if args.workload == "W4"
            else " (Parsl's default)"
        )
        + f"; @python_app(cache=True), BasicMemoizer(checkpoint_mode='{CHECKPOINT_MODE}')"
        f" + get_all_checkpoints(run_dir); logging={'off' if args.variant == 'nolog' else 'DEBUG parsl.log (default)'}"
        f"; split s: load {t1 - t0:.3f}, submit {t2 - t1:.3f}, result {t3 - t2:.3f}, cleanup {t4 - t3:.3f}"
    )
    report(
        args,
        t4 - t0,
        result,
        versions={"parsl": parsl.__version__, "python": sys.version.split()[0]},
        executed=EXECUTED,
        peak=PEAK.peak if args.workload == "W4" else None,
        notes=notes,
    )


if __name__ == "__main__":
    main()
