"""Fresh or stale for every node, and why: one decision, shared by the scheduler and `graph`.

A node is fresh when its record was made by its class's current code (its fingerprint,
`_source.py`) from the versions its deps have now, the Const values it reads now and the
content its input files (`File` arguments) have now.
With ``detect_source_change=False`` the code may differ, but the record must still come
from a class defined in the same file (two classes of one name never share results). Versions are unique per write, so a node whose deps are all fresh is fresh
exactly when its record matches them, and a node with a stale dep is stale too (it will
see a new version) without looking further.

`plan` is pure: no I/O, no event loop. What it needs comes from `prepare` (building the
graph runs the ``build_task`` methods, and fingerprinting classes walks their code, so
callers run it off the event loop) and from the index (the records, and which file made
each fingerprint). The scheduler runs the plan; `explain` puts its reasons into words.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, NamedTuple

from ._errors import InputFileError
from ._file import MARK as FILE_MARK
from ._graph import FRESH, STALE, Graph, Node, build_graph
from ._source import fingerprint

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._cache.session import Record
    from ._file import File
    from ._source import Fingerprint
    from ._task import Task

# Why a node is stale (`Node.why`, set by `plan`), in the order they are looked for.
NOT_STALE = 0
NO_RESULT = 1  # the cache holds no result for it
CODE_CHANGED = 2  # its class's code changed since its result was made
UPSTREAM_STALE = 3  # one of its deps is stale, so will have a new result
INPUTS_CHANGED = 4  # a dep's result or a Const value it reads is not the one it was made from
ELSEWHERE = 5  # made by a class of the same name defined in another file
UNREADABLE = 6  # its cached result could not be read back (set by the scheduler, during a run)


class Prepared(NamedTuple):
    """What a plan needs from the task objects: the graph, each class's fingerprint, the input files."""

    graph: Graph
    fingerprints: dict[type, Fingerprint]
    inputs: dict[str, tuple[File, list[Node]]]  # by absolute path: the file, the nodes taking it


def prepare(root: Task[Any, Any]) -> Prepared:
    """Build the graph of `root`, fingerprint each class in it, and find the input files.

    Runs every ``build_task`` and walks the classes' code: call it off the event loop.

    Raises:
        GraphError: the graph cannot be built.
    """
    graph = build_graph(root)
    fingerprints: dict[type, Fingerprint] = {}
    inputs: dict[str, tuple[File, list[Node]]] = {}
    for node in graph:
        cls = type(node.task)
        if cls not in fingerprints:
            fingerprints[cls] = fingerprint(cls)
        if FILE_MARK in node.key:  # rarely: only then ask the task
            for file in node.task.__af_files__():
                inputs.setdefault(str(file.path), (file, []))[1].append(node)
    return Prepared(graph, fingerprints, inputs)


def add_inputs(
    inputs: Mapping[str, tuple[File, list[Node]]], digests: Mapping[str, str], problems: Mapping[str, str]
) -> None:
    """Make the content digest of each input file part of what its nodes are made from.

    Args:
        inputs: the files and the nodes taking each, from `prepare`.
        digests: each file's content digest, by absolute path.
        problems: why a file has none ("does not exist", "cannot be read (...)").

    Raises:
        InputFileError: a file has no digest.
    """
    for path in sorted(inputs):  # sorted: each node's tokens in one order, run after run
        file, nodes = inputs[path]
        digest = digests.get(path)
        if digest is None:
            raise InputFileError(
                f"{nodes[0].task!r}: its input {file!r} {problems.get(path, 'does not exist')} "
                f"(looked for {path}); create it, or fix the path (a relative path is from the "
                "directory the task was made in)",
                task=repr(nodes[0].task),
                path=path,
            )
        token = "F" + digest
        for node in nodes:
            node.consts = f"{node.consts}|{token}" if node.consts else token


def plan(
    graph: Graph,
    records: Mapping[str, Record],
    fingerprints: Mapping[type, Fingerprint],
    *,
    detect: bool,
    made_where: Mapping[str, str] | None = None,
) -> list[Node]:
    """Mark every node fresh or stale, deps first; return the stale ones, in graph order.

    A fresh node gets the version of its record; a stale one the reason why (`Node.why`).

    Args:
        graph: the nodes, deps first.
        records: the index's record of each node that has one, by key.
        fingerprints: each class's, from `prepare`.
        detect: whether a change of code makes a node stale (``detect_source_change``).
        made_where: without `detect`, the identity (`Fingerprint.identity`) of the class
            that made each record's fingerprint (`Record.source`); unknown ones are stale.
    """
    digests = {cls: f.digest for cls, f in fingerprints.items()}
    identities = {cls: f.identity for cls, f in fingerprints.items()}
    where = made_where or {}
    stale: list[Node] = []
    for node in graph:  # the hot loop of a warm run: one pass, no calls per dep
        record = records.get(node.key)
        if record is None:
            node.why = NO_RESULT
        elif detect and record.source != digests[type(node.task)]:
            node.why = CODE_CHANGED
        elif not detect and where.get(record.source) != identities[type(node.task)]:
            node.why = ELSEWHERE
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


def is_current(record: Record | None, deps: str, source: str) -> bool:
    """Tell whether `record` was made from `deps` (a `node_signature`) by code fingerprinted `source`.

    Asked of a record that another run wrote while this one waited: it is reused only if
    the same code made it, whatever ``detect_source_change`` says (`plan` asks the same,
    inline, of every node before the run).
    """
    return record is not None and record.deps == deps and record.source == source


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
