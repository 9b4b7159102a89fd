"""Single-flight: a node shared by concurrent runs is computed once (SPEC §2).

Within one process (runs in one event loop) and across processes sharing a cache
directory (real subprocesses, a real ``kill -9`` of a lease holder).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from itertools import groupby
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from . import workflows
from .workflows import (
    LOG_ENV,
    READY_ENV,
    REPO_ROOT,
    FanSum,
    Gathered,
    Sleeper,
    Stamp,
    fan_nodes,
    log_pids,
    read_log,
    script_command,
)

if TYPE_CHECKING:
    from pathlib import Path

    from asyncflow import RunStats


@pytest.fixture(autouse=True)
def _fresh_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bodies run by this process count in `workflows.executions`; only children log.
    monkeypatch.delenv(LOG_ENV, raising=False)
    workflows.executions.clear()
    workflows.on_start.clear()


def labels(nodes: list[Any]) -> set[str]:
    return {repr(t) for t in nodes}


# (a) Concurrent runs in one process.


async def test_overlapping_runs_compute_shared_nodes_once(cache_dir: Path) -> None:
    delay = 0.05
    spans = [(0, 8), (2, 10), (4, 12), (1, 9)]  # pairs 4..7 are in all four graphs
    results: dict[tuple[int, int], tuple[int, RunStats]] = {}

    async def run(start: int, stop: int) -> None:
        results[start, stop] = await FanSum(start, stop, delay).run_with_stats(cache_dir=cache_dir)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for start, stop in spans:
                tg.start_soon(run, start, stop)

    for start, stop in spans:
        assert results[start, stop][0] == FanSum.expected(start, stop)
    distinct = set().union(*(labels(fan_nodes(start, stop, delay)) for start, stop in spans))
    assert set(workflows.executions) == distinct
    assert Counter(workflows.executions.values()) == {1: len(distinct)}, "a shared node ran twice"
    assert sum(stats.run for _, stats in results.values()) == len(distinct)
    for start, stop in spans:
        stats = results[start, stop][1]
        assert stats.run + stats.reused == len(fan_nodes(start, stop, delay))


async def test_identical_runs_compute_each_node_once(cache_dir: Path) -> None:
    delay = 0.05
    values: list[int] = []

    async def run() -> None:
        values.append(await FanSum(0, 5, delay).run(cache_dir=cache_dir))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(run)

    assert values == [FanSum.expected(0, 5)] * 4
    assert set(workflows.executions) == labels(fan_nodes(0, 5, delay))
    assert max(workflows.executions.values()) == 1


async def test_run_started_while_shared_bodies_run_waits_for_them(cache_dir: Path) -> None:
    """A second run that arrives while the first computes the shared leaves awaits them."""
    delay = 0.3
    results: dict[str, tuple[int, RunStats]] = {}

    async def run(name: str, start: int, stop: int) -> None:
        results[name] = await FanSum(start, stop, delay).run_with_stats(cache_dir=cache_dir)

    first_bodies = anyio.Event()
    workflows.on_start.append(lambda label: first_bodies.set())
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "first", 0, 4)
            await first_bodies.wait()
            assert not results
            tg.start_soon(run, "second", 1, 5)

    assert results["first"][0] == FanSum.expected(0, 4)
    assert results["second"][0] == FanSum.expected(1, 5)
    assert max(workflows.executions.values()) == 1, "a shared node ran twice"
    # The second run computed only what the first does not have: sleepers 8, 9 and
    # pair 4, plus its own sum.
    second = results["second"][1]
    assert (second.run, second.reused) == (4, 9)


# (b) Processes started together on one cache directory.


def start(cache_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    cmd = script_command(cache_dir, *args)
    env = {**os.environ, LOG_ENV: str(log)}
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait for `proc` (killing it after `timeout` s) and return what it printed."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"the workflow did not finish in {timeout} s: {stderr.decode()[-2000:]}")
    assert proc.returncode == 0, stderr.decode()[-2000:]
    return json.loads(stdout.decode().splitlines()[-1])


@pytest.mark.parametrize(
    ("spans", "backends"),
    [
        ([(0, 8), (0, 8)], ["asyncio", "trio"]),  # the same workflow
        ([(0, 8), (4, 12), (2, 10)], ["trio", "asyncio", "trio"]),  # overlapping ones
    ],
    ids=["same", "overlapping"],
)
def test_processes_started_together_compute_each_node_once(
    spans: list[tuple[int, int]], backends: list[str], cache_dir: Path, tmp_path: Path
) -> None:
    """Processes started at once on a new cache directory share its nodes' work."""
    delay = 0.2
    log = tmp_path / "bodies.log"
    # Four sleepers at a time: each run lasts about a second, so the processes overlap.
    options = ["--delay", str(delay), "--rate-leaf", "4"]
    procs = [
        start(cache_dir, log, "fan", str(stop), "--start", str(first), "--backend", backend, *options)
        for (first, stop), backend in zip(spans, backends, strict=True)
    ]
    outputs = [finish(p, timeout=30) for p in procs]

    assert [o["result"] for o in outputs] == [FanSum.expected(*span) for span in spans]
    graphs = [labels(fan_nodes(first, stop, delay)) for first, stop in spans]
    executed = Counter(read_log(log))
    assert set(executed) == set().union(*graphs)
    assert {label: count for label, count in executed.items() if count > 1} == {}, "a node ran twice"
    # Between them, the processes ran every node once and reused the others' work.
    assert sum(o["run"] for o in outputs) == len(executed)
    for out, graph in zip(outputs, graphs, strict=True):
        assert out["run"] + out["reused"] == len(graph)
    # A node only one process needs is run by that process.
    by_pid = log_pids(log)
    for i, (out, graph) in enumerate(zip(outputs, graphs, strict=True)):
        own = graph.difference(*(g for j, g in enumerate(graphs) if j != i))
        assert {by_pid[label] for label in own} <= {out["pid"]}


def test_processes_fanning_out_over_overlapping_children_compute_each_once(
    cache_dir: Path, tmp_path: Path
) -> None:
    """Bodies in two processes at once await sleepers 0..59 and 30..89: each sleeper runs once."""
    delay = 0.05
    log = tmp_path / "bodies.log"
    spans = [(0, 60), (30, 90)]
    # Four sleepers at a time: each process computes for over half a second, so they overlap.
    options = ["--delay", str(delay), "--rate-leaf", "4"]
    procs = [
        start(cache_dir, log, "gather", str(stop), "--start", str(first), "--backend", backend, *options)
        for (first, stop), backend in zip(spans, ["asyncio", "trio"], strict=True)
    ]
    outputs = [finish(p, timeout=30) for p in procs]

    assert [o["result"] for o in outputs] == [Gathered.expected(*span) for span in spans]
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    executed = Counter(label for label, _ in rows)
    assert {label: count for label, count in executed.items() if count > 1} == {}, "a node ran twice"
    children = {repr(Sleeper(i, delay)) for i in range(90)}
    assert set(executed) == children | {repr(Gathered(*span, delay)) for span in spans}
    assert sum(o["run"] for o in outputs) == len(executed)
    for out in outputs:
        assert out["run"] + out["reused"] == 60 + 1  # its sleepers and its parent
    # The processes ran their children at the same time: their lines in the log interleave.
    pids = [pid for label, pid in rows if label in children]
    assert len([pid for pid, _ in groupby(pids)]) > 2, "one process ran its children before the other"


# (c) A holder killed with SIGKILL does not block the others for the lease's TTL.


async def wait_for_lines(log: Path, count: int) -> None:
    path = anyio.Path(log)
    while not await path.exists() or len((await path.read_text()).splitlines()) < count:  # noqa: ASYNC110 - another process writes it
        await anyio.sleep(0.01)


async def test_waiter_takes_over_from_a_killed_holder(cache_dir: Path, tmp_path: Path) -> None:
    """B waits for A's leases while A lives, and takes them over seconds after kill -9."""
    n, delay = 4, 2.0
    log = tmp_path / "bodies.log"
    # A runs one sleeper at a time, but takes the leases of all of them at once.
    cmd = script_command(cache_dir, "fan", str(n), "--delay", str(delay), "--rate-leaf", "1")
    env = {**os.environ, LOG_ENV: str(log)}
    with anyio.fail_after(30):
        async with await anyio.open_process(cmd, cwd=REPO_ROOT, env=env) as holder:
            try:
                await wait_for_lines(log, 1)
                result: list[tuple[int, RunStats]] = []
                took = float("inf")
                async with anyio.create_task_group() as tg:

                    async def waiter() -> None:
                        result.append(await FanSum(0, n, delay).run_with_stats(cache_dir=cache_dir))

                    tg.start_soon(waiter)
                    await anyio.sleep(0.5)
                    assert not workflows.executions, "B ran a node whose lease A holds"
                    os.kill(holder.pid, signal.SIGKILL)
                    # Reap A at once: until then its pid exists, and its leases look held.
                    assert await holder.wait() == -signal.SIGKILL
                    killed = time.monotonic()
                    with anyio.fail_after(10):
                        while not result:  # noqa: ASYNC110 - set by a sibling task after a kill
                            await anyio.sleep(0.01)
                    took = time.monotonic() - killed
            finally:
                if holder.returncode is None:
                    holder.kill()
    value, stats = result[0]
    assert value == FanSum.expected(0, n)
    assert stats.run == len(fan_nodes(0, n, delay))  # A finished nothing
    assert took < 7, f"B took {took:.1f} s after A was killed (the lease TTL is 15 s)"
    (started,) = read_log(log)  # A started one body, then died
    assert started.startswith("Sleeper(")


def test_a_run_longer_than_its_lease_ttl_keeps_its_nodes(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewed all along, a run's leases still bind a process that starts TTLs after it leased them."""
    monkeypatch.setenv("AF_LEASE_TTL", "1")
    n, delay = 3, 0.8  # one sleeper at a time: ~5 s, five TTLs
    log = tmp_path / "bodies.log"
    first = start(cache_dir, log, "fan", str(n), "--delay", str(delay), "--rate-leaf", "1")
    deadline = time.monotonic() + 20
    while len(read_log(log)) < 4:  # some 2.4 s (TTLs) after it leased every node
        assert first.poll() is None, first.communicate()[1].decode()
        assert time.monotonic() < deadline, "the first process did not start its bodies"
        time.sleep(0.01)
    second = start(cache_dir, log, "fan", str(n), "--delay", str(delay), "--backend", "trio")
    first_out, second_out = finish(first, timeout=30), finish(second, timeout=30)
    assert second_out["result"] == FanSum.expected(0, n)
    bodies = read_log(log)
    assert len(bodies) == len(set(bodies)), f"a node was computed twice: {sorted(bodies)}"
    assert (first_out["run"], second_out["run"]) == (len(fan_nodes(0, n, delay)), 0)


def test_process_started_after_a_killed_holder(cache_dir: Path, tmp_path: Path) -> None:
    """Leases left by a process killed mid-run bind nobody: a new process finishes at once."""
    n, delay = 6, 0.3
    log = tmp_path / "bodies.log"
    holder = start(cache_dir, log, "fan", str(n), "--delay", str(delay), "--rate-leaf", "2")
    deadline = time.monotonic() + 20
    while len(read_log(log)) < 3:
        assert holder.poll() is None, holder.communicate()[1].decode()
        assert time.monotonic() < deadline, "the holder did not start its bodies"
        time.sleep(0.005)
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=10)  # reap it: a zombie's pid still looks alive
    assert holder.returncode == -signal.SIGKILL
    before = len(read_log(log))

    started = time.monotonic()
    out = finish(start(cache_dir, log, "fan", str(n), "--delay", str(delay), "--backend", "trio"), timeout=14)
    took = time.monotonic() - started
    assert out["result"] == FanSum.expected(0, n)
    assert out["run"] + out["reused"] == len(fan_nodes(0, n, delay))
    assert out["run"] == len(read_log(log)) - before
    assert took < 10, f"took {took:.1f} s (the lease TTL is 15 s)"


# (d) A holder paused past its lease does not overwrite the work of the one that took over.


def stop_outside_a_write(proc: subprocess.Popen[bytes], index: Path) -> None:
    """SIGSTOP `proc`, at a moment it does not hold the index's write lock (its renewer writes)."""
    probe = sqlite3.connect(index, timeout=0.2, isolation_level=None)
    try:
        for _ in range(50):
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # stopped mid-write: let it finish, and try again
                os.kill(proc.pid, signal.SIGCONT)
                time.sleep(0.01)
                continue
            probe.execute("ROLLBACK")
            return
        pytest.fail("the process always held the index's write lock")
    finally:
        probe.close()


def test_a_paused_holder_does_not_overwrite_newer_work(cache_dir: Path, tmp_path: Path) -> None:
    """A holder stopped past its lease loses the node to another process, and keeps out of its record."""
    ready = tmp_path / "first-runs-its-body"
    env = {**os.environ, "AF_LEASE_TTL": "1", LOG_ENV: str(tmp_path / "bodies.log")}
    first = subprocess.Popen(
        script_command(cache_dir, "stamp", "0", "--backend", "trio"),
        cwd=REPO_ROOT,
        env={**env, READY_ENV: str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert first.poll() is None, first.communicate()[1].decode()
            assert time.monotonic() < deadline, "the first process did not start its body"
            time.sleep(0.005)
        index = cache_dir / "asyncflow" / "index.sqlite"
        stop_outside_a_write(first, index)
        # Stopped, it renews nothing: wait until its leases have expired.
        conn = sqlite3.connect(index)
        while conn.execute("SELECT max(expires) FROM owners").fetchone()[0] >= time.time():
            assert time.monotonic() < deadline + 10, "the stopped process's leases did not expire"
            time.sleep(0.05)
        conn.close()
        second = finish(
            subprocess.Popen(
                script_command(cache_dir, "stamp", "0"),
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
            timeout=20,
        )
        assert second["run"] == 2  # it took over the expired leases and computed both nodes
        os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=20)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.communicate()
    assert first.returncode == 0, stderr.decode()[-2000:]
    mine = json.loads(stdout.decode().splitlines()[-1])
    assert mine["run"] == 2
    assert mine["result"] != second["result"], "the two processes were meant to compute different values"
    assert stderr.decode().count("another process computed it meanwhile; keeping its result") == 2
    # The index holds the second process's records, and no file of the first's results.
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    named = {path for (path,) in conn.execute("SELECT path FROM nodes WHERE path IS NOT NULL")}
    conn.close()
    results = cache_dir / "asyncflow" / "results"
    assert {str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()} == named
    value, stats = anyio.run(lambda: Stamp().run_with_stats(cache_dir=cache_dir))
    assert value == second["result"]
    assert (stats.run, stats.reused) == (0, 2)


# Several openers of a fresh cache at once.


def test_first_use_waits_for_a_concurrent_opener(cache_dir: Path) -> None:
    """While another opener holds the fresh index's write lock, a run waits for it."""
    index = cache_dir / "asyncflow" / "index.sqlite"
    index.parent.mkdir(parents=True)
    # What another process creating this cache holds for a moment.
    other = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, other.execute, ["ROLLBACK"])
    release.start()
    try:
        assert Sleeper(3, 0.0).run_graph(cache_dir=cache_dir) == 9
    finally:
        release.join()
        other.close()
