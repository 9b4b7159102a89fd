"""Prefect 3 peer: tasks with input-based caching and persisted results, in a flow.

Runs in its own virtualenv (``benchmarks/peers/prefect.txt``)::

    python benchmarks/peers/prefect_peer.py --workload W2 --size 1000 --cache-dir DIR

Everything Prefect keeps lives under ``DIR``: ``PREFECT_HOME`` (profiles, memo store),
the ephemeral API server's SQLite database and the persisted task results. No server is
started by hand: the flow call starts Prefect's ephemeral API server (a uvicorn
subprocess on 127.0.0.1) by itself, and that start-up is inside the timed wall.

Each DAG node is a ``@task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)``
(the default policy also hashes the flow-run id, which would defeat a warm run). A warm
run (a fresh process on the same DIR) finds every task's result record under the results
path and runs no body (``executed`` counts the bodies run).

- ``threads`` (default): a sync ``@flow`` builds the DAG with ``task.submit(...)``,
  passing upstream futures as arguments so Prefect resolves them and records the
  dependencies; the flow's ``ThreadPoolTaskRunner(max_workers=32)`` runs the task runs
  (submission is in topological order, so a bounded pool cannot deadlock). W4's limit is
  ``ThreadPoolTaskRunner(max_workers=20)``: a pool of 20 threads.
- ``async``: an async ``@flow`` awaiting async ``@task`` calls (``asyncio.gather`` for
  concurrency, a memo of asyncio tasks for W1's shared nodes). W4's limit is Prefect's
  own global concurrency limit ``"w4"`` (20 slots, upserted by the flow through the
  ephemeral API), which is slow: slot acquisition polls the server with back-off.

Prefect's console handler is set to WARNING so no line is printed per task run; the
server prints tracebacks ("Error flushing 1 events") on stderr when it is terminated at
exit while its task-run recorder still has events: harmless to the results.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402

ARGS = common.parse(variants=("threads", "async"))
CACHE_DIR = os.path.abspath(ARGS.cache_dir)
os.makedirs(CACHE_DIR, exist_ok=True)

HOME = os.path.join(CACHE_DIR, "prefect_home")
RESULTS = os.path.join(CACHE_DIR, "results")
DB = os.path.join(HOME, "prefect.db")

# Settings, before prefect is imported (prefect reads them at import).
SETTINGS = {
    # Everything under the cache dir.
    "PREFECT_HOME": HOME,
    "PREFECT_PROFILES_PATH": os.path.join(HOME, "profiles.toml"),
    "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{DB}",
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": RESULTS,
    "PREFECT_SERVER_MEMO_STORE_PATH": os.path.join(HOME, "memo_store.toml"),
    # The ephemeral server Prefect starts by itself (its default profile's setting).
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    # Its 20 s default start-up timeout is too short here for a cold start (migrations).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    # Nothing that reaches the network: SDK analytics (DO_NOT_TRACK), server analytics.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    # Don't print a line per task run to the terminal (the API log handler is unchanged).
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}
for _k, _v in SETTINGS.items():
    os.environ[_k] = _v
for _k in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
    os.environ.pop(_k, None)  # no server or Cloud the user started: the ephemeral one

import prefect  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import INPUTS, TASK_SOURCE  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.concurrency.asyncio import concurrency as aconcurrency  # noqa: E402
from prefect.server.api.server import SubprocessASGIServer  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

# Measure (only) how long the ephemeral server takes to come up inside the flow call.
SERVER_START: list[float] = []
_orig_start = SubprocessASGIServer.start


def _timed_start(self: SubprocessASGIServer, timeout: int | None = None) -> None:
    already = self.running
    t0 = time.perf_counter()
    _orig_start(self, timeout)
    if not already:
        SERVER_START.append(time.perf_counter() - t0)


SubprocessASGIServer.start = _timed_start  # type: ignore[method-assign]

# Bodies really executed in this process.
_lock = threading.Lock()
EXECUTED = 0


def _ran() -> None:
    global EXECUTED
    with _lock:
        EXECUTED += 1


PEAK = common.Peak()
POLICY = INPUTS + TASK_SOURCE
TASK_OPTS = {"cache_policy": POLICY, "persist_result": True}

# Worker threads of the flow's ThreadPoolTaskRunner for W1-W3 (W4 uses W4_LIMIT).
# Prefect's default is unbounded (one thread per pending task run); a bound keeps
# thousands of threads from being made. Topological submission order means a bound
# cannot deadlock: every upstream task run is ahead of its dependants in the queue.
WORKERS = 32


# W1


@task(**TASK_OPTS)
def choose_edge(n: int, k: int) -> int:
    _ran()
    return 1


@task(**TASK_OPTS)
def choose(n: int, k: int, left: int, right: int) -> int:
    _ran()
    return left + right


@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def w1(n: int) -> int:
    memo: dict[tuple[int, int], object] = {}

    def build(a: int, b: int):
        key = (a, b)
        if key not in memo:
            if b == 0 or b == a:
                memo[key] = choose_edge.submit(a, b)
            else:
                left = build(a - 1, b - 1)
                right = build(a - 1, b)
                memo[key] = choose.submit(a, b, left, right)
        return memo[key]

    return build(n, n // 2).result()


# W2


@task(**TASK_OPTS)
def leaf(i: int) -> int:
    _ran()
    return i


@task(**TASK_OPTS)
def total(values: list[int]) -> int:
    _ran()
    return sum(values)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def w2(n: int) -> int:
    leaves = [leaf.submit(i) for i in range(n)]
    return total.submit(leaves).result()


# W3


@task(**TASK_OPTS)
def chain_first(i: int) -> int:
    _ran()
    return 1


@task(**TASK_OPTS)
def chain(i: int, prev: int) -> int:
    _ran()
    return prev + 1


@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def w3(n: int) -> int:
    fut = chain_first.submit(1)
    for i in range(2, n + 1):
        fut = chain.submit(i, fut)
    return fut.result()


# W4


@task(**TASK_OPTS)
def sleepy(i: int) -> int:
    _ran()
    with PEAK:
        time.sleep(common.W4_SLEEP)
    return i


@task(**TASK_OPTS)
def sleepy_sink(values: list[int]) -> int:
    _ran()
    return sum(values)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=common.W4_LIMIT))
def w4(n: int) -> int:
    sleepers = [sleepy.submit(i) for i in range(n)]
    # Submitted last, so it takes a worker only once every sleeper has started.
    return sleepy_sink.submit(sleepers).result()


# Variant "async": an async @flow awaiting async @tasks called directly (each task run
# runs on the flow's event loop; asyncio.gather for concurrency). W4's limit is a Prefect
# global concurrency limit "w4" of 20 slots, created (upserted) by the flow.


@task(**TASK_OPTS)
async def achoose_edge(n: int, k: int) -> int:
    _ran()
    return 1


@task(**TASK_OPTS)
async def achoose(n: int, k: int, left: int, right: int) -> int:
    _ran()
    return left + right


@flow
async def aw1(n: int) -> int:
    memo: dict[tuple[int, int], asyncio.Task[int]] = {}

    async def node(a: int, b: int) -> int:
        if b == 0 or b == a:
            return await achoose_edge(a, b)
        left, right = await asyncio.gather(get(a - 1, b - 1), get(a - 1, b))
        return await achoose(a, b, left, right)

    def get(a: int, b: int) -> asyncio.Task[int]:
        if (a, b) not in memo:
            memo[(a, b)] = asyncio.ensure_future(node(a, b))
        return memo[(a, b)]

    return await get(n, n // 2)


@task(**TASK_OPTS)
async def aleaf(i: int) -> int:
    _ran()
    return i


@task(**TASK_OPTS)
async def atotal(values: list[int]) -> int:
    _ran()
    return sum(values)


@flow
async def aw2(n: int) -> int:
    leaves = await asyncio.gather(*(aleaf(i) for i in range(n)))
    return await atotal(list(leaves))


@task(**TASK_OPTS)
async def achain_first(i: int) -> int:
    _ran()
    return 1


@task(**TASK_OPTS)
async def achain(i: int, prev: int) -> int:
    _ran()
    return prev + 1


@flow
async def aw3(n: int) -> int:
    value = await achain_first(1)
    for i in range(2, n + 1):
        value = await achain(i, value)
    return value


@task(**TASK_OPTS)
async def asleepy(i: int) -> int:
    _ran()
    async with aconcurrency("w4", occupy=1, strict=True):
        with PEAK:
            await asyncio.sleep(common.W4_SLEEP)
    return i


@task(**TASK_OPTS)
async def asleepy_sink(values: list[int]) -> int:
    _ran()
    return sum(values)


@flow
async def aw4(n: int) -> int:
    async with get_client() as client:
        await client.upsert_global_concurrency_limit_by_name("w4", common.W4_LIMIT)
    sleepers = await asyncio.gather(*(asleepy(i) for i in range(n)))
    return await asleepy_sink(list(sleepers))


if ARGS.variant == "async":
    FLOWS = {"W1": aw1, "W2": aw2, "W3": aw3, "W4": aw4}
else:
    FLOWS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}


def main() -> None:
    fn = FLOWS[ARGS.workload]
    common.settle()
    start = time.perf_counter()
    result = fn(ARGS.size)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    wall = time.perf_counter() - start

    server = SERVER_START[0] if SERVER_START else None
    if ARGS.variant == "async":
        how = [
            "async @flow awaiting async @task calls (asyncio.gather; W1 memo of asyncio tasks)",
        ]
        if ARGS.workload == "W4":
            how.append("W4 limit: Prefect global concurrency limit 'w4' of 20 slots")
    else:
        how = [
            "sync @flow, task.submit() with upstream futures as arguments (Prefect resolves and tracks them)",
            f"ThreadPoolTaskRunner(max_workers={WORKERS})"
            if ARGS.workload != "W4"
            else f"W4 limit: ThreadPoolTaskRunner(max_workers={common.W4_LIMIT}), a pool",
        ]
    notes = [
        *how,
        "@task(cache_policy=INPUTS+TASK_SOURCE, persist_result=True), results on local "
        "storage under the cache dir",
        "ephemeral API server (uvicorn subprocess, SQLite under the cache dir) started "
        "by the flow call" + (f": server start {server:.2f} s of the wall" if server is not None else ""),
        "settings: " + ", ".join(f"{k}={v}" for k, v in SETTINGS.items() if CACHE_DIR not in v),
    ]
    common.report(
        ARGS,
        wall,
        result,
        versions={"prefect": prefect.__version__, "python": sys.version.split()[0]},
        executed=EXECUTED,
        peak=PEAK.peak if ARGS.workload == "W4" else None,
        notes="; ".join(notes),
    )


if __name__ == "__main__":
    main()
