"""Why each node of a graph is fresh or stale, in words, without running anything.

The decision is the plan's (`_plan.py`), the one the scheduler runs; this module reads
what the index knows and puts the plan's reasons into words a person can read: no
result, the class's code changed, an upstream node is stale or its result changed
since, a task its body awaited last time is stale or changed, the last run failed.
`asyncflow graph` draws these, with the tasks bodies awaited as dynamic edges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._cache.store import Known, digest_inputs, known
from ._graph import FRESH
from ._options import settings_from
from ._plan import (
    CODE_CHANGED,
    DYNAMIC_CHANGED,
    ELSEWHERE,
    NO_RESULT,
    UPSTREAM_STALE,
    add_awaited,
    add_inputs,
    note,
    order,
    plan,
    prepare,
)
from ._source import what_changed

if TYPE_CHECKING:
    from pathlib import Path

    from ._errors import InputFileError
    from ._file import File
    from ._graph import Node
    from ._plan import Awaited
    from ._source import Fingerprint
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
            ``"input changed: data/a.csv"``, ``"dynamic dependency Square(3) changed"``
            (or ``is stale``), or the last failure's message.
        deps: the keys of its upstream nodes, in order.
        awaited: the keys of the tasks its body awaited in the run that made its result
            (dynamic dependencies), in order.
    """

    task: Task[Any, Any]
    key: str
    task_name: str
    state: State
    reason: str
    deps: tuple[str, ...]
    awaited: tuple[str, ...] = ()


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
    facts = Known({}, {}, {}, {}, {})
    awaited: dict[Node, Awaited] = {}
    by_key = {n.key: n for n in graph}
    nodes = more = graph.order
    unusable: dict[Node, InputFileError] | None = None  # the graph's own inputs must be there
    while True:  # the graph, then the tasks its bodies awaited last time, and so on
        if inputs:
            found = await digest_inputs(settings.cache_dir, list(inputs))
            add_inputs(inputs, found.digests, found.problems, unusable)
            changed.update(found.changed)
        facts.add(await known(settings.cache_dir, [n.key for n in more]))
        parents = [n for n in more if n.key in facts.records and facts.records[n.key].awaited is not None]
        if not parents:
            break
        inputs = dict[str, "tuple[File, list[Node]]"]()
        more = await anyio.to_thread.run_sync(
            _add_awaited, parents, facts, by_key, awaited, fingerprints, inputs
        )
        nodes = [*nodes, *more]
        unusable = unusable or {}
    if awaited:
        nodes = order(nodes, awaited)
    plan(nodes, facts.records, fingerprints, detect=detect, made_where=facts.made_where, awaited=awaited)
    out: list[NodeStatus] = []
    for node in nodes:
        state: State = "fresh"
        reason = ""
        if node.state != FRESH:
            state = "stale"
            gone = unusable.get(node) if unusable else None
            reason = _reason(
                node, facts, fingerprints[type(node.task)].manifest, changed, awaited.get(node), gone
            )
            failure = facts.failures.get(node.key)
            if failure is not None:
                state = "failed"
                reason = failure.splitlines()[0]
        deps = tuple(d.key for d in node.deps)
        dynamic = tuple(n.key for n, _ in awaited[node].nodes) if node in awaited else ()
        out.append(NodeStatus(node.task, node.key, type(node.task).task_name, state, reason, deps, dynamic))
    return out


def _add_awaited(
    parents: list[Node],
    facts: Known,
    by_key: dict[str, Node],
    awaited: dict[Node, Awaited],
    fingerprints: dict[type, Fingerprint],
    inputs: dict[str, tuple[File, list[Node]]],
) -> list[Node]:
    """Add the tasks the records of `parents` say their bodies awaited (`_plan.add_awaited`); return the new nodes."""
    added = add_awaited(parents, facts.records, by_key, awaited)
    note(added, fingerprints, inputs)
    return added


def _reason(
    node: Node,
    facts: Known,
    manifest: dict[str, str],
    changed: dict[str, float],
    awaited: Awaited | None,
    gone: InputFileError | None,
) -> str:
    """Say why the plan found `node` stale.

    Args:
        node: the node, planned.
        facts: what the index knows.
        manifest: what its class's code is made of now.
        changed: when each input file's content last changed.
        awaited: the tasks its body awaited last time, if any.
        gone: why an input file of a task a body awaited last time is unusable now, if so.
    """
    if gone is not None:
        return f"its input {os.path.relpath(gone.path)} is gone or cannot be read"
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
    if node.why == DYNAMIC_CHANGED:
        assert awaited is not None, "asyncflow bug: a dynamic dependency changed, but it has none"
        if awaited.lost:
            return f"dynamic dependency: {awaited.lost}"
        child = next(n for n, v in awaited.nodes if n.state != FRESH or n.version != v)
        return f"dynamic dependency {child.task!r} {'is stale' if child.state != FRESH else 'changed'}"
    # Its inputs changed: name an upstream node or an input file newer than its own run.
    started = facts.times.get(node.key, (0.0, 0.0))[0]
    newer = [d for d in node.deps if facts.times.get(d.key, (0.0, 0.0))[1] > started]
    if newer:
        return f"upstream {newer[0].task!r} changed"
    for file in node.task.__af_files__():
        if changed.get(str(file.path), 0.0) > started:
            return f"input changed: {os.path.relpath(file.path)}"
    return "an upstream result, input file or Const value changed"
