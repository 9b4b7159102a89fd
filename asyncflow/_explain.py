"""Why each node of a graph is fresh or stale, in words, without running anything.

The decision is the plan's (`_plan.py`), the one the scheduler runs; this module reads
what the index knows and puts the plan's reasons into words a person can read: no
result, the class's code changed, an upstream node is stale or its result changed
since, the last run failed. `asyncflow graph` draws these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._cache.store import Known, digest_inputs, known
from ._graph import FRESH
from ._options import settings_from
from ._plan import CODE_CHANGED, ELSEWHERE, NO_RESULT, UPSTREAM_STALE, add_inputs, plan, prepare
from ._source import what_changed

if TYPE_CHECKING:
    from pathlib import Path

    from ._graph import Node
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
        reason: why it is stale (empty when fresh): ``"no result"``, ``"code changed:
            helpers.scale"`` (the parts of the code that changed), ``"version 1 -> 2"``,
            ``"upstream Choose(5, 2) is stale"``, ``"upstream Choose(5, 2) changed"``,
            ``"input changed: data/a.csv"``, or the last failure's message.
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
    options: dict[str, Any] = {}
    if cache_dir is not None:
        options["cache_dir"] = cache_dir
    if detect_source_change is not None:
        options["detect_source_change"] = detect_source_change
    settings = settings_from(options)
    detect = settings.detect_source_change
    graph, fingerprints, inputs = await anyio.to_thread.run_sync(prepare, root)
    changed: dict[str, float] = {}  # input file -> when its content last changed
    if inputs:
        found = await digest_inputs(settings.cache_dir, list(inputs))
        add_inputs(inputs, found.digests, found.problems)
        changed = found.changed
    facts = await known(settings.cache_dir, [n.key for n in graph])
    plan(graph, facts.records, fingerprints, detect=detect, made_where=facts.made_where)
    out: list[NodeStatus] = []
    for node in graph:
        state: State = "fresh"
        reason = ""
        if node.state != FRESH:
            state = "stale"
            reason = _reason(node, facts, fingerprints[type(node.task)].manifest, changed)
            failure = facts.failures.get(node.key)
            if failure is not None:
                state = "failed"
                reason = failure.splitlines()[0]
        deps = tuple(d.key for d in node.deps)
        out.append(NodeStatus(node.task, node.key, type(node.task).task_name, state, reason, deps))
    return out


def _reason(node: Node, facts: Known, manifest: dict[str, str], changed: dict[str, float]) -> str:
    """Say why the plan found `node` stale.

    Args:
        node: the node, planned.
        facts: what the index knows.
        manifest: what its class's code is made of now.
        changed: when each input file's content last changed.
    """
    if node.why == NO_RESULT:
        return "no result"
    if node.why == CODE_CHANGED:
        old = facts.manifests.get(facts.records[node.key].source)
        return "code changed" if old is None else what_changed(old, manifest)
    if node.why == ELSEWHERE:
        return "made by a class of the same name in another file"
    if node.why == UPSTREAM_STALE:
        dep = next(d for d in node.deps if d.state != FRESH)
        return f"upstream {dep.task!r} is stale"
    # Its inputs changed: name an upstream node or an input file newer than its own run.
    started = facts.times.get(node.key, (0.0, 0.0))[0]
    newer = [d for d in node.deps if facts.times.get(d.key, (0.0, 0.0))[1] > started]
    if newer:
        return f"upstream {newer[0].task!r} changed"
    for file in node.task.__af_files__():
        if changed.get(str(file.path), 0.0) > started:
            return f"input changed: {os.path.relpath(file.path)}"
    return "an upstream result, input file or Const value changed"
