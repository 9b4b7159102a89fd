"""Fresh or stale for every node, and why: one decision, shared by the scheduler and `graph`.

A node is fresh when its record was made by its class's current code (with
``detect_source_change``) from the versions its deps have now and the Const values it
reads now. Versions are unique per write, so a node whose deps are all fresh is fresh
exactly when its record matches them, and a node with a stale dep is stale too (it will
see a new version) without looking further.

`plan` is pure: no I/O, no event loop. What it needs comes from `prepare` (building the
graph runs the ``build_task`` methods, and hashing class sources reads their files, so
callers run it off the event loop) and from the index (the records). The scheduler runs
the plan; `explain` puts its reasons into words.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ._graph import FRESH, STALE, build_graph
from ._source import source_hash

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._cache.session import Record
    from ._graph import Graph, Node
    from ._task import Task

# Why a node is stale (`Node.why`, set by `plan`), in the order they are looked for.
NOT_STALE = 0
NO_RESULT = 1  # the cache holds no result for it
CODE_CHANGED = 2  # its class's code changed since its result was made
UPSTREAM_STALE = 3  # one of its deps is stale, so will have a new result
INPUTS_CHANGED = 4  # a dep's result or a Const value it reads is not the one it was made from


def prepare(root: Task[Any, Any], detect_source_change: bool) -> tuple[Graph, dict[type, str]]:
    """Build the graph of `root` and hash the source of each class in it ("" when not detecting).

    Runs every ``build_task`` and reads class sources: call it off the event loop.

    Raises:
        GraphError: the graph cannot be built.
        TaskDefinitionError: a class's source cannot be read.
    """
    graph = build_graph(root)
    sources: dict[type, str] = {}
    for node in graph:
        cls = type(node.task)
        if cls not in sources:
            sources[cls] = source_hash(cls) if detect_source_change else ""
    return graph, sources


def plan(
    graph: Graph, records: Mapping[str, Record], sources: Mapping[type, str], *, detect: bool
) -> list[Node]:
    """Mark every node fresh or stale, deps first; return the stale ones, in graph order.

    A fresh node gets the version of its record; a stale one the reason why (`Node.why`).
    """
    stale: list[Node] = []
    for node in graph:  # the hot loop of a warm run: one pass, no calls per dep
        record = records.get(node.key)
        if record is None:
            node.why = NO_RESULT
        elif detect and record.source != sources[type(node.task)]:
            node.why = CODE_CHANGED
        elif node.why != UPSTREAM_STALE:  # else a dep marked it, below
            if record.deps == node_signature(node, keep=True):
                node.state = FRESH
                node.version = record.version
                continue
            node.why = INPUTS_CHANGED
        node.state = STALE
        stale.append(node)
        for dependent in node.dependents:
            dependent.why = UPSTREAM_STALE
    return stale


def is_current(record: Record | None, deps: str, source: str, *, detect: bool) -> bool:
    """Tell whether `record` was made from `deps` (a `node_signature`) by code hashing to `source`.

    `plan` asks the same of every node, inline.
    """
    if record is None or record.deps != deps:
        return False
    return not detect or record.source == source


def node_signature(node: Node, *, keep: bool = False) -> str:
    """Hash the versions of `node`'s deps and its Const values, as its record keeps them.

    With `keep` (the deps' versions are final), the hash is kept for later calls.
    """
    if node.signature is not None:
        return node.signature
    value = signature([d.version or "" for d in node.deps], node.consts)
    if keep:
        node.signature = value
    return value


def signature(dep_versions: list[str], consts: str) -> str:
    """Hash the versions of a node's deps and its Const values, as its record keeps them."""
    if not dep_versions and not consts:
        return _NOTHING  # a node reading nothing, as every leaf: the same hash, made once
    return hashlib.blake2b("\0".join([*dep_versions, consts]).encode(), digest_size=12).hexdigest()


_NOTHING = hashlib.blake2b(b"", digest_size=12).hexdigest()
