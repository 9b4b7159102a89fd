"""``kill -9`` at any instant leaves the cache consistent (SPEC §3).

A real subprocess runs a workflow of a few hundred nodes (small results in the index,
large ones in result files, some gzip-compressed) and is killed with SIGKILL once a
given number of bodies have started: points spread deterministically from the first
body to the last. The test process then checks the SQLite file, loads every result
the cache holds, runs the workflow again and checks that exactly the nodes without
a result ran, and that a last run reuses everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from asyncflow import CacheError

from . import workflows
from .workflows import LOG_ENV, REPO_ROOT, crash_nodes, crash_workflow, read_log, script_command

if TYPE_CHECKING:
    from pathlib import Path

    from asyncflow import Task

N_LEAVES = 280
DELAY = 0.02  # seconds each async leaf sleeps
RATE = 16  # leaves at once in the killed process, so its run lasts about a second
NODES = crash_nodes(N_LEAVES, DELAY)
TOTAL = len(NODES)
# Kill once this many bodies have started: the first, the last, and between.
KILL_POINTS = [1, *(round(TOTAL * f) for f in (0.08, 0.2, 0.3, 0.42, 0.55, 0.67, 0.8, 0.92)), TOTAL]

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_log_here(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bodies run by this process count in `workflows.executions`; only children log.
    monkeypatch.delenv(LOG_ENV, raising=False)


def start_workflow(cache_dir: Path, log: Path, backend: str) -> subprocess.Popen[bytes]:
    """Start the crash workflow in a new Python process, logging its bodies to `log`."""
    options = ["--delay", str(DELAY), "--rate-leaf", str(RATE), "--backend", backend]
    cmd = script_command(cache_dir, "crash", str(N_LEAVES), *options)
    env = {**os.environ, LOG_ENV: str(log)}
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_after(proc: subprocess.Popen[bytes], log: Path, started: int, timeout: float = 10.0) -> int:
    """SIGKILL `proc` once `started` bodies logged (or it exited); reap it; return its status."""
    deadline = time.monotonic() + timeout
    while len(read_log(log)) < started and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the workflow logged {len(read_log(log))} of {started} bodies in {timeout} s")
        time.sleep(0.002)
    # Until reaped, the pid is ours (a zombie at worst), so this never hits another process.
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    # Reap at once: a zombie's pid still looks alive, and its leases would look held.
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode in (0, -signal.SIGKILL), stderr.decode()
    return proc.returncode


def index_file(cache_dir: Path) -> Path:
    (path,) = (cache_dir / "asyncflow").glob("*.sqlite")
    return path


def integrity(cache_dir: Path) -> str:
    conn = sqlite3.connect(index_file(cache_dir))
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def cached_results(cache_dir: Path) -> set[int]:
    """Return the indices in NODES of the nodes with a result; check each result loads right."""
    found: set[int] = set()
    limiter = anyio.CapacityLimiter(8)

    async def check(i: int, task: Task[Any, Any], expected: object) -> None:
        async with limiter:
            try:
                value = await task.result(cache_dir=cache_dir)
            except CacheError as exc:
                assert "has no cached result" in str(exc), f"{task!r}: {exc}"  # noqa: PT017 - reports which task
                return
        assert value == expected, f"{task!r}: the cached result is wrong"
        found.add(i)

    async with anyio.create_task_group() as tg:
        for i, (task, expected) in enumerate(NODES):
            tg.start_soon(check, i, task, expected)
    return found


async def recover(cache_dir: Path) -> None:
    """Check what the killed run left, run again, and check what ran."""
    found = await cached_results(cache_dir)
    root, expected_root = NODES[-1]
    workflows.executions.clear()
    # Leases of the killed process must not hold this run up for their TTL (15 s).
    with anyio.fail_after(10):
        result, stats = await crash_workflow(N_LEAVES, DELAY).run_with_stats(cache_dir=cache_dir)
    assert result == expected_root

    # Exactly the nodes without a result ran, each once; the others were reused.
    ran = workflows.executions
    for i, (task, _) in enumerate(NODES):
        assert ran[repr(task)] == (0 if i in found else 1), f"{task!r} (cached: {i in found})"
    assert sum(ran.values()) == stats.run == TOTAL - len(found)
    assert stats.reused == len(found)
    assert stats.failed == 0
    by_class = Counter((type(t).task_name, i in found) for i, (t, _) in enumerate(NODES))
    assert set(stats) == {name for name, _ in by_class}
    for name, counts in stats.items():
        assert (counts.run, counts.reused, counts.skipped) == (by_class[name, False], by_class[name, True], 0)

    # Everything is now cached and fresh.
    workflows.executions.clear()
    result, stats = await crash_workflow(N_LEAVES, DELAY).run_with_stats(cache_dir=cache_dir)
    assert result == expected_root
    assert (stats.run, stats.reused) == (0, TOTAL)
    assert not workflows.executions
    assert await root.result(cache_dir=cache_dir) == expected_root


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_then_run_again(point: int, cache_dir: Path, tmp_path: Path) -> None:
    # Alternate the backends of the killed process and of the recovering one.
    parity = KILL_POINTS.index(point) % 2
    killed_backend, backend = ("trio", "asyncio") if parity else ("asyncio", "trio")
    log = tmp_path / "bodies.log"
    status = kill_after(start_workflow(cache_dir, log, killed_backend), log, point)
    if point < TOTAL:
        assert status == -signal.SIGKILL, "the workflow finished before it could be killed"
    started = read_log(log)
    assert len(started) >= point
    assert len(set(started)) == len(started), "a body ran twice in one process"

    assert integrity(cache_dir) == "ok"
    anyio.run(recover, cache_dir, backend=backend)
    assert integrity(cache_dir) == "ok"


def test_kill_9_repeatedly_on_one_cache(cache_dir: Path, tmp_path: Path) -> None:
    """Each process killed resumes from what the previous ones kept; the cache stays whole."""
    kept: set[int] = set()
    progress: list[int] = []
    for round_, point in enumerate((TOTAL // 5, TOTAL // 3, TOTAL // 4)):
        log = tmp_path / f"bodies-{round_}.log"
        proc = start_workflow(cache_dir, log, ("asyncio", "trio")[round_ % 2])
        assert kill_after(proc, log, point) == -signal.SIGKILL
        rerun = set(read_log(log)) & {repr(NODES[i][0]) for i in kept}
        assert not rerun, f"a process ran nodes an earlier one had kept: {sorted(rerun)[:5]}"
        assert integrity(cache_dir) == "ok"
        now = anyio.run(cached_results, cache_dir)
        assert kept <= now, "a kill lost results an earlier process had kept"
        kept = now
        progress.append(len(kept))
    # Results are written behind the run (batched every ~20 ms), so an early kill may find
    # nothing written yet; over three kills, something must have been kept.
    assert progress[-1] > 0
    anyio.run(recover, cache_dir)


def test_finished_process_keeps_every_result(cache_dir: Path, tmp_path: Path) -> None:
    """A run that returned has written everything: results in files (raw and gzip) and inline."""
    log = tmp_path / "bodies.log"
    proc = start_workflow(cache_dir, log, "trio")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert json.loads(stdout)["run"] == len(read_log(log)) == TOTAL
    files = [
        p
        for p in (cache_dir / "asyncflow").rglob("*")
        if p.is_file() and "sqlite" not in p.name and p.stat().st_size > 64 * 1024
    ]
    big = sum(type(t) in (workflows.BigLeaf, workflows.NoisyLeaf) for t, _ in NODES)
    assert len(files) == big
    assert integrity(cache_dir) == "ok"

    assert len(anyio.run(cached_results, cache_dir)) == TOTAL
    result, stats = crash_workflow(N_LEAVES, DELAY).run_graph_with_stats(cache_dir=cache_dir)
    assert result == NODES[-1][1]
    assert (stats.run, stats.reused) == (0, TOTAL)


def asyncflow_check(cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``asyncflow check`` on `cache_dir` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "asyncflow", "check", "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_kill_9_soak_leaves_nothing_for_check_to_find(cache_dir: Path, tmp_path: Path) -> None:
    """Twenty kills at random moments on one cache: every value right, `asyncflow check` clean."""
    rng = random.Random(20)
    for round_ in range(20):
        log = tmp_path / f"bodies-{round_}.log"
        proc = start_workflow(cache_dir, log, ("asyncio", "trio")[round_ % 2])
        time.sleep(rng.uniform(0.0, 0.3))  # sometimes while it starts, before any body
        started = len(read_log(log))
        kill_after(proc, log, started + rng.randint(1, TOTAL // 3))
        if not (cache_dir / "asyncflow" / "index.sqlite").exists():
            continue  # killed before it made its index
        check = asyncflow_check(cache_dir)
        assert check.returncode == 0, f"after kill {round_ + 1}:\n{check.stdout}{check.stderr}"
        assert " 0 damaged" in check.stdout
    anyio.run(recover, cache_dir)  # every result loads right; only what was missing runs
    final = asyncflow_check(cache_dir)
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"{TOTAL} checked against their digests, 0 damaged" in final.stdout
