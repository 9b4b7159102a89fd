"""The run history: every run and every attempt of every body, in the index, kept for the latest runs."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import anyio
import pytest

from asyncflow import RequiresList, Task, TaskFailedError
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
    assert json.loads(run.counts) == {"run": 4, "reused": 0, "failed": 0, "retried": 0, "skipped": 0}
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
    conn.close()
    assert kept == {r.id for r in runs}  # the attempts of the runs forgotten are gone too


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
