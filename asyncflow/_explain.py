"""Why each node of a graph is fresh or stale, without running anything.

The same decision the scheduler makes before a run (`_Scheduler._plan`), with reasons a
person can read: no result, the class's code changed, an upstream node is stale or its
result changed since, the last run failed. `asyncflow graph` draws these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._cache import index
from ._cache.index import Index, Record
from ._graph import signature
from ._options import settings_from

if TYPE_CHECKING:
    from pathlib import Path

    from ._graph import Graph, Node
    from ._task import Task

State = Literal["fresh", "stale", "failed"]


@dataclass(frozen=True)
class NodeStatus:
    """One node of a graph, and whether the next run would reuse it.

    Attributes:
        task: the task (``repr`` gives ``Choose(6, 3)``).
        key: its cache key, ``"module.Class(args)"``.
        task_name: its class's `task_name`.
        state: ``"fresh"`` (reused), ``"stale"`` (would run) or ``"failed"`` (stale, and
            its last run failed).
        reason: why it is stale (empty when fresh): ``"no result"``, ``"code changed"``,
            ``"upstream Choose(5, 2) is stale"``, ``"upstream Choose(5, 2) changed"``, or
            the last failure's message.
        deps: the keys of its upstream nodes, in order.
    """

    task: Task[Any, Any]
    key: str
    task_name: str
    state: State
    reason: str
    deps: tuple[str, ...]


async def explain(
    root: Task[Any, Any], *, cache_dir: str | Path | None = None, detect_source_change: bool | None = None
) -> list[NodeStatus]:
    """Return the status of every node upstream of `root` (included), deps first.

    Raises:
        GraphError: the graph cannot be built.
        CacheError: the cache cannot be read.
    """
    from ._scheduler import _prepare

    options: dict[str, Any] = {}
    if cache_dir is not None:
        options["cache_dir"] = cache_dir
    if detect_source_change is not None:
        options["detect_source_change"] = detect_source_change
    settings = settings_from(options)
    graph, sources = await anyio.to_thread.run_sync(_prepare, root, settings)
    keys = [n.key for n in graph]
    records: dict[str, Record] = {}
    times: dict[str, tuple[float, float]] = {}
    failures: dict[str, str] = {}
    idx = await Index.open(settings.cache_dir, create=False)
    if idx is not None:
        try:
            records = await idx.call(index.lookup, keys)
            times, failures = await idx.call(index.times_and_failures, keys)
        finally:
            await idx.close()
    return _statuses(graph, sources, settings.detect_source_change, records, times, failures)


def _statuses(
    graph: Graph,
    sources: dict[type, str],
    detect: bool,
    records: dict[str, Record],
    times: dict[str, tuple[float, float]],
    failures: dict[str, str],
) -> list[NodeStatus]:
    out: list[NodeStatus] = []
    stale: set[str] = set()
    for node in graph:
        reason = _reason(node, sources, detect, records, times, stale)
        state: State = "fresh"
        if reason:
            stale.add(node.key)
            state = "stale"
            if node.key in failures:
                state = "failed"
                reason = failures[node.key].splitlines()[0]
        out.append(
            NodeStatus(
                node.task, node.key, type(node.task).task_name, state, reason, tuple(d.key for d in node.deps)
            )
        )
    return out


def _reason(
    node: Node,
    sources: dict[type, str],
    detect: bool,
    records: dict[str, Record],
    times: dict[str, tuple[float, float]],
    stale: set[str],
) -> str:
    record = records.get(node.key)
    if record is None:
        return "no result"
    if detect and record.source != sources[type(node.task)]:
        return "code changed"
    for dep in node.deps:
        if dep.key in stale:
            return f"upstream {dep.task!r} is stale"
    if signature([records[d.key].version for d in node.deps], node.consts) == record.deps:
        return ""
    started = times.get(node.key, (0.0, 0.0))[0]
    newer = [d for d in node.deps if times.get(d.key, (0.0, 0.0))[1] > started]
    if newer:
        return f"upstream {newer[0].task!r} changed"
    return "an upstream result or Const value changed"
