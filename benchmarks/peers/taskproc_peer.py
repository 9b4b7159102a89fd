"""taskproc (0.25.3, the successor of checkpoint-tool) running W1-W4; see ``common.py``.

Run as ``python benchmarks/peers/taskproc_peer.py --workload W2 --size 1000 --cache-dir DIR
[--variant process|thread]`` in a virtualenv made from ``taskproc.txt``.

How taskproc works, as used here (read from its source):

- A task is a `taskproc.Task` subclass; its ``__init__`` arguments are the node's key
  (serialized to JSON), and every attribute holding a `Future` (another task, a
  `FutureList`, a `Const`) is a requirement. Building the same class with the same
  arguments twice gives the same node, so W1's shared nodes are built and run once.
- Tasks are built inside ``with Graph(cache_dir)``; results are pickled to
  ``cache_dir/<module>.<Class>/results/<id>/result.pkl.gz``, so a fresh process on the
  same ``--cache-dir`` finds them and `run_graph` drops every fresh node (warm run).
- ``task.run_graph(executor=..., rate_limits={label: n})`` runs the DAG. Without an
  executor it makes ``ProcessPoolExecutor()`` (``os.cpu_count()`` workers): the
  ``process`` variant. With a ``ThreadPoolExecutor`` (the ``thread`` variant), taskproc
  runs every task "detached": each thread pickles the task and starts a new
  ``python -c`` subprocess for it (that is taskproc's design, not this script's choice).
- A task class's ``task_label`` puts it on a channel; ``rate_limits={"w4": 20}`` caps
  how many of its tasks are submitted at once (W4).

The task classes live in the module ``taskproc_peer``: when run as a script this file
imports itself under that name, so the classes (and taskproc's cache names) are
``taskproc_peer.Choose`` etc., and worker processes/subprocesses import them by name
(the script's directory goes on ``sys.path`` and ``PYTHONPATH``).

Bodies run in other processes, so `executed` and W4's `peak` are counted with a small
counter file locked with ``fcntl.flock`` (`FileCounter`), shared by every process.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import version

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
from taskproc import Const, FutureList, Graph, Task  # noqa: E402

VARIANTS = ("process", "thread")
COUNTER_ENV = "AFPEER_TASKPROC_COUNTER"  # the counter file's path, for every process
W4_POOL = 32  # pool size for W4: above the limit, so taskproc's rate limit is what binds


# --- counting bodies across processes -----------------------------------------------


class FileCounter:
    """Running / peak / total body counts in one small file, updated under ``flock``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _update(self, delta: int) -> tuple[int, int, int]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = os.pread(fd, 64, 0).split()
            running, peak, total = (int(x) for x in data) if data else (0, 0, 0)
            running += delta
            peak = max(peak, running)
            total += delta > 0
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{running} {peak} {total}".encode(), 0)
            return running, peak, total
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> tuple[int, int, int]:
        return self._update(0)

    @contextmanager
    def body(self) -> Iterator[None]:
        self._update(+1)
        try:
            yield
        finally:
            self._update(-1)


def body() -> AbstractContextManager[None]:
    """Counts one body run (in whatever process runs it)."""
    return FileCounter(os.environ[COUNTER_ENV]).body()


# --- the workloads as taskproc tasks ------------------------------------------------


class Choose(Task[int]):
    """W1: Choose(n, k) = Choose(n-1, k-1) + Choose(n-1, k); 1 at the edges."""

    def __init__(self, n: int, k: int) -> None:
        self.edge = not 0 < k < n
        if not self.edge:
            self.left = Choose(n - 1, k - 1)
            self.right = Choose(n - 1, k)

    def run_task(self) -> int:
        with body():
            if self.edge:
                return 1
            return self.left.get_result() + self.right.get_result()


class Leaf(Task[int]):
    """W2: a trivial leaf returning its argument."""

    def __init__(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        with body():
            return self.i


class Sum(Task[int]):
    """W2: sums Leaf(0) ... Leaf(n - 1), one list requirement."""

    def __init__(self, n: int) -> None:
        self.leaves = FutureList([Leaf(i) for i in range(n)])

    def run_task(self) -> int:
        with body():
            return sum(self.leaves.get_result())


class Chain(Task[int]):
    """W3: Chain(1) returns 1 (reads Const(0)), Chain(i) returns Chain(i - 1) + 1."""

    def __init__(self, i: int) -> None:
        self.prev = Chain(i - 1) if i > 1 else Const(0)

    def run_task(self) -> int:
        with body():
            return self.prev.get_result() + 1


class Sleepy(Task[int]):
    """W4: sleeps 0.05 s on channel "w4" (rate-limited by run_graph), returns i."""

    task_label = "w4"

    def __init__(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        with body():
            time.sleep(common.W4_SLEEP)
            return self.i


class SleepySink(Task[int]):
    """W4: gathers Sleepy(0) ... Sleepy(n - 1)."""

    def __init__(self, n: int) -> None:
        self.sleepers = FutureList([Sleepy(i) for i in range(n)])

    def run_task(self) -> int:
        with body():
            return sum(self.sleepers.get_result())


# --- one run ------------------------------------------------------------------------


def build(workload: str, size: int) -> Task[int]:
    if workload == "W1":
        return Choose(size, size // 2)
    if workload == "W2":
        return Sum(size)
    if workload == "W3":
        # Built bottom-up: Chain(i) then finds Chain(i - 1) already registered. Built
        # top-down, Chain(1000)'s construction recurses through taskproc's __init__
        # wrapper and hits RecursionError at Python's default limit of 1000.
        root: Task[int] = Chain(1)
        for i in range(2, size + 1):
            root = Chain(i)
        return root
    return SleepySink(size)


def make_executor(variant: str, workload: str) -> Executor | None:
    if workload == "W4":
        pool = ProcessPoolExecutor if variant == "process" else ThreadPoolExecutor
        return pool(max_workers=W4_POOL)
    if variant == "process":
        return None  # taskproc's default: ProcessPoolExecutor()
    return ThreadPoolExecutor()


def dbm_backend() -> str:
    """The module `shelve` (taskproc's id tables) uses for a new file on this Python."""
    import dbm

    for name in dbm._names:  # what dbm.open tries, in order
        try:
            __import__(name)
        except ImportError:
            continue
        return name
    return "none"


def main() -> None:
    args = common.parse(variants=VARIANTS)
    variant = args.variant or VARIANTS[0]
    # Worker processes (forked) and detached subprocesses (thread variant) import this
    # module by name and find the counter file through the environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    counter_dir = tempfile.mkdtemp(prefix="afpeer-taskproc-")
    os.environ[COUNTER_ENV] = os.path.join(counter_dir, "counter")
    counter = FileCounter(os.environ[COUNTER_ENV])
    counter.read()  # creates it

    common.settle()
    start = time.perf_counter()
    with Graph(cache_dir=args.cache_dir):
        root = build(args.workload, args.size)
        kwargs = {"rate_limits": {"w4": common.W4_LIMIT}} if args.workload == "W4" else {}
        result, _stats = root.run_graph(executor=make_executor(variant, args.workload), **kwargs)
    wall = time.perf_counter() - start

    _running, peak, executed = counter.read()
    shutil.rmtree(counter_dir, ignore_errors=True)

    notes = [f"variant {variant}"]
    if variant == "process" and args.workload != "W4":
        notes.append("taskproc's default executor ProcessPoolExecutor() (os.cpu_count() workers)")
    elif variant == "thread":
        notes.append("ThreadPoolExecutor(): taskproc runs each task as a detached `python -c` subprocess")
    notes.append("each submission cloudpickles the task with its class's whole registry of nodes")
    if dbm_backend() == "dbm.dumb":
        notes.append("taskproc's shelve id tables use dbm.dumb (this Python has no _gdbm/_dbm)")
    if args.workload == "W3":
        notes.append(
            "Chain(1) .. Chain(n) built bottom-up (top-down construction hits RecursionError at n=1000)"
        )
    if args.workload == "W4":
        notes.append(
            f"limit: taskproc rate_limits={{'w4': {common.W4_LIMIT}}} on the Sleepy channel, "
            f"pool of {W4_POOL} {'processes' if variant == 'process' else 'threads'}; "
            "peak counted across processes with a flock'ed counter file"
        )
    notes.append("executed = bodies counted across processes")
    common.report(
        args,
        wall,
        result,
        versions={"taskproc": version("taskproc"), "python": sys.version.split()[0]},
        executed=executed,
        peak=peak if args.workload == "W4" else None,
        notes="; ".join(notes),
    )


if __name__ == "__main__":
    # Run the copy of this file imported as `taskproc_peer`, so the task classes have a
    # module name that worker processes can import (not `__main__`).
    import taskproc_peer

    taskproc_peer.main()
