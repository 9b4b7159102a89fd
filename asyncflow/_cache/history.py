"""The history of runs as it is read back: runs, attempts, graphs, output.

A run's graph is kept in parts (the ``graphs`` table): the graph as planned before the
run, then the tasks bodies awaited as the run went on, a part per write. `index.encode_graph`
makes a part on the writer's thread (a run never imports this module); `RunGraph` joins the
parts of a run again, with what its attempts say happened to each node.

`Reader` is the read-only door the web view uses: a connection opened read-only (it
never creates, migrates or locks the index for writing), polled for changes with
SQLite's ``data_version``. Nothing here runs user code: results are never unpickled.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from .._keys import split_key
from . import index, paths
from .index import Attempt, RunRow

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

_STATES = {
    "ok": "ran",
    "failed": "failed",
    "cancelled": "cancelled",
}  # an attempt's outcome -> its node's state


@dataclass
class GraphNode:
    """One node of a run's graph, and what happened to it in that run.

    ``state``: ``reused`` (fresh in the cache), ``ran`` (its body returned), ``failed``
    (its latest attempt failed), ``cancelled`` (with the run), ``pending`` (stale, not run yet) or ``skipped`` (stale,
    and the run ended without running it: an upstream failed, or it was cancelled).
    """

    key: str
    task_name: str
    stale: bool
    deps: tuple[str, ...]
    awaited: list[str] = field(default_factory=list[str])
    state: str = "pending"
    error: str | None = None

    @property
    def label(self) -> str:
        """The task as it is written, ``Square(3)``."""
        return label_of(self.key)


def label_of(key: str) -> str:
    """Return the task a key stands for as it is written, ``Square(3)``: the key without the module."""
    return key[split_key(key)[0].rfind(".") + 1 :]


class RunGraph(NamedTuple):
    """A run's graph, deps first, as its history keeps it; `complete` is False when it was too big to keep."""

    nodes: dict[str, GraphNode]
    complete: bool


def decode_graph(parts: Sequence[bytes], attempts: Sequence[Attempt], ended: bool) -> RunGraph:
    """Join the parts of a run's graph, each node in the state its latest attempt left it in."""
    nodes: dict[str, GraphNode] = {}
    complete = True
    for data in parts:
        part = index.decode_graph_part(data)
        if part is None:  # damaged, or another Python's marshal: the graph lacks this part
            complete = False
            continue
        rows, edges = part
        for key, stale, deps in rows:
            if key not in nodes:
                nodes[key] = GraphNode(key, split_key(key)[0], stale, deps)
        for parent, children in edges:
            node = nodes.get(parent)
            if node is not None:
                node.awaited.extend(c for c in children if c not in node.awaited)
    for node in nodes.values():
        node.state = "reused" if not node.stale else ("skipped" if ended else "pending")
    for attempt in attempts:  # in the order they started: the latest decides
        node = nodes.get(attempt.key)
        if node is None:
            continue
        node.state = _STATES.get(attempt.outcome, "failed")
        node.error = attempt.error
    return RunGraph(nodes, complete)


def settled(run: RunRow) -> RunRow:
    """Return `run`, as ``died`` if it is ``running`` but its process (on this host) is gone: killed, or its machine restarted."""
    if run.outcome == "running" and not index.owner_alive(run.id, math.inf, 0.0):
        return run._replace(outcome="died")
    return run


class TaskRecord(NamedTuple):
    """What the index holds about one node, without its result."""

    key: str
    task_name: str
    version: str | None  # None: no result
    size: int | None
    started: float | None
    finished: float | None
    failure: str | None  # the last failure's message, if its last run failed


class Reader:
    """A read-only connection to the index of `cache_dir`, for the web view (one thread at a time)."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None:
            path = paths.index_path(self.cache_dir)
            if not path.exists():
                return None
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False, timeout=10)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > index.SCHEMA_VERSION:
                conn.close()
                raise index.CacheError(
                    f"the cache at {path} was written by a newer asyncflow (schema {version}, "
                    f"this one reads {index.SCHEMA_VERSION}); upgrade asyncflow"
                )
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the connection (it opens again when needed)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _tables(self, conn: sqlite3.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def changed_since(self, seen: int | None) -> tuple[bool, int | None]:
        """Tell whether another connection wrote to the index since `seen` (a `data_version`), and the new one."""
        conn = self._connect()
        if conn is None:
            return False, None
        now = int(conn.execute("PRAGMA data_version").fetchone()[0])
        return now != seen, now

    def runs(self, limit: int) -> list[RunRow]:
        """Return the latest `limit` runs, the latest first (none before the index has a history)."""
        conn = self._connect()
        if conn is None or "runs" not in self._tables(conn):
            return []
        return [settled(r) for r in index.runs(conn, limit)]

    def run(self, run: str) -> RunRow | None:
        """Return the run `run`, if the history still has it."""
        conn = self._connect()
        if conn is None or "runs" not in self._tables(conn):
            return None
        row = conn.execute("SELECT * FROM runs WHERE id=?", (run,)).fetchone()
        return None if row is None else settled(RunRow(*row))

    def attempts(self, run: str) -> list[Attempt]:
        """Return every attempt of the run `run`, in the order they started."""
        conn = self._connect()
        if conn is None or "attempts" not in self._tables(conn):
            return []
        return index.attempts_of(conn, run)

    def graph(self, run: RunRow, attempts: Sequence[Attempt] | None = None) -> RunGraph:
        """Return the graph of `run` with the state of each node, as its `attempts` left it (read if not given)."""
        conn = self._connect()
        if conn is None or "graphs" not in self._tables(conn):
            return RunGraph({}, False)
        parts = [d for (d,) in conn.execute("SELECT data FROM graphs WHERE run=? ORDER BY batch", (run.id,))]
        tried = self.attempts(run.id) if attempts is None else attempts
        graph = decode_graph(parts, tried, run.ended is not None or run.outcome != "running")
        complete = graph.complete and bool(parts) and len(graph.nodes) >= counts(run).get("total", 0)
        return RunGraph(graph.nodes, complete)

    def task(self, key: str) -> TaskRecord:
        """Return what the index holds about the node `key`."""
        conn = self._connect()
        task_name = split_key(key)[0]
        if conn is None:
            return TaskRecord(key, task_name, None, None, None, None, None)
        row = conn.execute(
            "SELECT version, size, started, finished FROM nodes WHERE key=?", (key,)
        ).fetchone()
        failure = conn.execute("SELECT error FROM failures WHERE key=?", (key,)).fetchone()
        version, size, started, finished = row if row is not None else (None, None, None, None)
        return TaskRecord(key, task_name, version, size, started, finished, failure[0] if failure else None)

    def attempts_of_node(self, key: str, limit: int) -> list[Attempt]:
        """Return the latest `limit` attempts of the node `key`, the latest first."""
        conn = self._connect()
        if conn is None or "attempts" not in self._tables(conn):
            return []
        return index.attempts_of_node(conn, key, limit)


def counts(run: RunRow) -> dict[str, int]:
    """Return the counts of `run` (run, reused, failed, retried, skipped; total and running while it goes on)."""
    try:
        found: Any = json.loads(run.counts)  # Any: a JSON object, unless damaged
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in cast("dict[str, Any]", found).items() if isinstance(v, int)}
