"""The run history: every run and every attempt of every body, in the index, kept for the latest runs."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import anyio
import pytest

import asyncflow
from asyncflow import Requires, RequiresList, Task, TaskFailedError, WorkflowFailedError
from asyncflow._cache.history import Reader, counts
from asyncflow._cache.index import HOST
from asyncflow._cache.store import Attempt, RunRow, attempts, history, new_attempts_of_node

from .test_cli import cli

CALLS: dict[str, int] = {}


class Leaf(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:  # a plain def: in a thread
        return self.i


class Root(Task):
    leaves: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.leaves = [Leaf(i) for i in range(n)]

    async def run_task(self) -> int:  # on the loop
        return sum(self.leaves)


class Flaky(Task, retries=2, retry_delay=0):
    def build_task(self, tag: str) -> None:
        self.tag = tag

    async def run_task(self) -> str:
        CALLS[self.tag] = CALLS.get(self.tag, 0) + 1
        if CALLS[self.tag] < 3:
            raise ValueError(f"flaky {CALLS[self.tag]}\nsecond line")
        return "ok"


class Broken(Task):
    async def run_task(self) -> int:
        raise RuntimeError("broken for good")


class Sleeper(Task):
    async def run_task(self) -> None:
        await anyio.sleep(30)


async def _latest(cache_dir: Path) -> tuple[RunRow, list[Attempt]]:
    runs = await history(cache_dir, 1)
    assert runs, "no run in the history"
    return runs[0], await attempts(cache_dir, runs[0].id)


async def test_a_run_and_each_attempt_of_its_bodies_are_kept(cache_dir: Path) -> None:
    assert await Root(3).run(cache_dir=cache_dir, max_workers=2, rate_limits={"x": 1}) == 3
    run, tried = await _latest(cache_dir)
    assert (run.entrypoint, run.root, run.outcome) == ("Root(3)", Root(3).__af_key__, "ok")
    assert (run.host, run.pid) == (HOST, os.getpid())
    assert run.ended is not None
    assert run.started <= run.ended
    assert json.loads(run.counts) == {
        "run": 4,
        "reused": 0,
        "failed": 0,
        "retried": 0,
        "skipped": 0,
        "total": 4,
    }
    options = json.loads(run.options)
    assert (options["max_workers"], options["rate_limits"], options["executor"]) == (2, {"x": 1}, "thread")
    places = {a.key: a.place for a in tried}
    assert places == {Root(3).__af_key__: "loop", **{Leaf(i).__af_key__: "thread" for i in range(3)}}
    assert all(a.outcome == "ok" and a.error is None and a.started <= a.ended for a in tried)
    assert all(run.started <= a.started and a.ended <= run.ended for a in tried)
    # A run with everything cached is a run too; it ran no body.
    await Root(3).run(cache_dir=cache_dir)
    run, tried = await _latest(cache_dir)
    assert (json.loads(run.counts)["reused"], tried) == (4, [])


async def test_the_attempts_of_a_node_since_the_last_look(cache_dir: Path) -> None:
    key = Leaf(1).__af_key__
    assert await new_attempts_of_node(cache_dir, key, frozenset()) == ([], [])  # no index yet
    await Root(2).run(cache_dir=cache_dir)
    found, seen = await new_attempts_of_node(cache_dir, key, frozenset())
    assert [a.key for a in found] == [key]
    assert await new_attempts_of_node(cache_dir, key, frozenset(seen)) == ([], [])  # nothing new
    await Leaf(1).clear(cache_dir=cache_dir)
    await Root(2).run(cache_dir=cache_dir)
    found, more = await new_attempts_of_node(cache_dir, key, frozenset(seen))
    assert ([a.key for a in found], set(more) & set(seen)) == ([key], set())  # the new run's only


async def test_retries_are_attempts_with_their_errors(cache_dir: Path) -> None:
    tag = f"retry-{anyio.current_time()}"
    assert await Flaky(tag).run(cache_dir=cache_dir) == "ok"
    run, tried = await _latest(cache_dir)
    assert [(a.attempt, a.outcome) for a in tried] == [(0, "failed"), (1, "failed"), (2, "ok")]
    assert tried[0].error == f"Flaky({tag!r}) failed: ValueError: flaky 1"  # its first line
    assert json.loads(run.counts)["retried"] == 2


async def test_a_failed_run_and_a_cancelled_one(cache_dir: Path) -> None:
    with pytest.raises(TaskFailedError):
        await Broken().run(cache_dir=cache_dir)
    run, tried = await _latest(cache_dir)
    assert (run.outcome, [a.outcome for a in tried]) == ("failed", ["failed"])
    assert tried[0].error == "Broken() failed: RuntimeError: broken for good"
    with anyio.move_on_after(0.5):
        await Sleeper().run(cache_dir=cache_dir)
    run, tried = await _latest(cache_dir)
    assert (run.outcome, [a.outcome for a in tried]) == ("cancelled", ["cancelled"])
    assert run.ended is not None


async def test_where_a_body_ran(cache_dir: Path) -> None:
    await Leaf(7).run(cache_dir=cache_dir, executor="process")
    assert (await _latest(cache_dir))[1][0].place == "process"
    await Leaf(8).run(cache_dir=cache_dir, prefixes={Leaf.task_name: ["env", "A=1"]})
    assert (await _latest(cache_dir))[1][0].place.startswith("prefix: env A=1 (pid ")


async def test_only_the_latest_runs_are_kept(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AF_KEEP_RUNS", "3")
    for n in range(5):
        await Root(n + 1).run(cache_dir=cache_dir)
    runs = await history(cache_dir, 10)
    assert [r.entrypoint for r in runs] == ["Root(5)", "Root(4)", "Root(3)"]
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    kept = {run for (run,) in conn.execute("SELECT DISTINCT run FROM attempts")}
    graphs = {run for (run,) in conn.execute("SELECT DISTINCT run FROM graphs")}
    conn.close()
    assert kept == graphs == {r.id for r in runs}  # the attempts and graphs of the runs forgotten go too


class Gate(Task):
    """Waits for `OPEN`, so that a test can look at the run while it goes on."""

    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await OPEN[0].wait()
        return self.i


class Waits(Task):
    gates: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.gates = [Gate(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.gates) + sum(await asyncflow.gather(Leaf(100), Leaf(101)))


OPEN: list[anyio.Event] = []


async def test_a_run_shows_as_running_with_its_counts_while_it_goes_on(cache_dir: Path) -> None:
    OPEN[:] = [anyio.Event()]
    reader = Reader(cache_dir)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Waits(3).run(cache_dir=cache_dir))
        with anyio.fail_after(10):  # polled: what is waited for is the index, as a reader sees it
            while not (runs := reader.runs(1)) or counts(runs[0]).get("running") != 3:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        run = runs[0]
        assert (run.outcome, run.ended, run.entrypoint) == ("running", None, "Waits(3)")
        assert counts(run) == {
            "run": 0,
            "reused": 0,
            "failed": 0,
            "retried": 0,
            "skipped": 0,
            "total": 4,
            "running": 3,
        }
        graph = reader.graph(run)
        assert {n.label: n.state for n in graph.nodes.values()} == {
            "Gate(0)": "pending", "Gate(1)": "pending", "Gate(2)": "pending", "Waits(3)": "pending"
        }  # fmt: skip
        OPEN[0].set()
    run = reader.runs(1)[0]
    assert run.outcome == "ok"
    graph = reader.graph(run)
    assert graph.complete
    waits = graph.nodes[Waits(3).__af_key__]
    assert waits.deps == tuple(Gate(i).__af_key__ for i in range(3))
    assert waits.awaited == [Leaf(100).__af_key__, Leaf(101).__af_key__]  # joined as it ran
    assert {n.state for n in graph.nodes.values()} == {"ran"}
    assert len(graph.nodes) == counts(run)["total"] == 6
    # The next run reuses all: the graph as planned has the tasks the body awaited last time.
    await Waits(3).run(cache_dir=cache_dir)
    graph = reader.graph(reader.runs(1)[0])
    assert {n.state for n in graph.nodes.values()} == {"reused"}
    assert graph.nodes[Waits(3).__af_key__].awaited == [Leaf(100).__af_key__, Leaf(101).__af_key__]
    reader.close()


class SlowRetry(Task, retries=1, retry_delay=30):
    async def run_task(self) -> int:
        raise ValueError("not yet")


async def test_an_attempt_to_be_retried_is_in_the_history_before_the_retry(cache_dir: Path) -> None:
    reader = Reader(cache_dir)
    with anyio.move_on_after(10) as scope:  # the retry waits 30 s: the history must not
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: SlowRetry().run(cache_dir=cache_dir))
            while not (runs := reader.runs(1)) or not reader.attempts(runs[0].id):  # noqa: ASYNC110 - the index, as a reader sees it
                await anyio.sleep(0.05)
            tried = reader.attempts(runs[0].id)
            assert [(a.attempt, a.outcome) for a in tried] == [(0, "failed")]
            assert runs[0].outcome == "running"
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    reader.close()


async def test_a_failed_node_and_the_nodes_it_stopped(cache_dir: Path) -> None:
    class_root = Fails(2)
    with pytest.raises(WorkflowFailedError):
        await class_root.run(cache_dir=cache_dir, on_error="continue")
    reader = Reader(cache_dir)
    graph = reader.graph(reader.runs(1)[0])
    states = {n.label: (n.state, n.error) for n in graph.nodes.values()}
    assert states == {
        "Broken()": ("failed", "Broken() failed: RuntimeError: broken for good"),
        "Leaf(0)": ("ran", None),
        "Leaf(1)": ("ran", None),
        "Fails(2)": ("skipped", None),
    }
    reader.close()


class Fails(Task):
    leaves: RequiresList[int]
    broken: Requires[int]

    def build_task(self, n: int) -> None:
        self.leaves = [Leaf(i) for i in range(n)]
        self.broken = Broken()

    async def run_task(self) -> int:
        return 0


async def test_the_graph_of_a_run_too_big_to_keep(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("asyncflow._cache.session.GRAPH_MAX", 3)
    await Root(5).run(cache_dir=cache_dir)
    reader = Reader(cache_dir)
    run = reader.runs(1)[0]
    graph = reader.graph(run)
    assert (graph.complete, graph.nodes, counts(run)["total"]) == (False, {}, 6)
    reader.close()


def test_the_history_reads_an_index_without_it(tmp_path: Path) -> None:
    """A reader of an index that no run has written yet (or an older asyncflow's) finds nothing, and writes nothing."""
    reader = Reader(tmp_path)
    assert (reader.runs(5), reader.run("x"), reader.attempts("x")) == ([], None, [])
    assert not (tmp_path / "asyncflow").exists()
    index = tmp_path / "asyncflow" / "index.sqlite"
    index.parent.mkdir()
    conn = sqlite3.connect(index)
    conn.execute("CREATE TABLE nodes (key TEXT PRIMARY KEY)")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    assert (reader.runs(5), reader.attempts_of_node("k", 5)) == ([], [])
    reader.close()


def test_a_bad_retention_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AF_KEEP_RUNS", "none")
    from asyncflow import OptionError

    with pytest.raises(OptionError, match=r"\$AF_KEEP_RUNS='none' is not a positive whole number"):
        Root(1).run_graph(cache_dir=tmp_path / "c")


FLOW = """
from asyncflow import RequiresList, Task


class Part(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i


class Main(Task):
    parts: RequiresList[int]

    def build_task(self) -> None:
        self.parts = [Part(i) for i in range(3)]

    async def run_task(self) -> int:
        return sum(self.parts)
"""


def test_the_runs_command(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text(FLOW)
    for _ in range(2):
        assert cli("run", flow, cwd=tmp_path).returncode == 0
    cache = tmp_path / ".cache"
    table = cli("runs", "--cache-dir", cache, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "started",
        "took",
        "outcome",
        "run",
        "reused",
        "failed",
        "skipped",
        "entrypoint",
        "where",
    ]
    latest, first = lines[1].split(), lines[2].split()
    assert latest[4:10] == ["ok", "0", "4", "0", "0", "Main()"]  # the latest first ("0.07 s" is 2 words)
    assert first[4:10] == ["ok", "4", "0", "0", "0", "Main()"]
    doc = json.loads(cli("runs", "--cache-dir", cache, "-n", "1", "--json", cwd=tmp_path).stdout)
    assert [r["counts"]["reused"] for r in doc["runs"]] == [4]
    empty = cli("runs", "--cache-dir", tmp_path / "nothing", cwd=tmp_path)
    assert (empty.returncode, "no runs recorded" in empty.stdout) == (0, True)
    helped = cli("runs", "--help", cwd=tmp_path)
    assert all(option in helped.stdout for option in ("--cache-dir", "--last", "--json"))
    assert cli("runs", "-n", "0", cwd=tmp_path).returncode == 2
