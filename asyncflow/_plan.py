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

A body may await tasks while it runs (dynamic dependencies, see `_scheduler.join`); its
record keeps them (`_recipes`). `add_awaited` makes them again and adds them (and their
upstream) to the graph, `order` puts them before the node that awaited them, and the plan
finds that node fresh only if each is fresh and has the result the body read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from ._errors import InputFileError
from ._file import MARK as FILE_MARK
from ._graph import DONE, FRESH, STALE, Graph, Node, build_graph, build_more
from ._hashing import blake2b
from ._recipes import decode
from ._source import fingerprint

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

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
DYNAMIC_CHANGED = 7  # a task its body awaited is stale, has another result, or cannot be made again


class Prepared(NamedTuple):
    """What a plan needs from the task objects: the graph, each class's fingerprint, the input files."""

    graph: Graph
    fingerprints: dict[type, Fingerprint]
    inputs: dict[str, tuple[File, list[Node]]]  # by absolute path: the file, the nodes taking it


class Awaited(NamedTuple):
    """The tasks a node's body awaited last time, as its record keeps them, made into nodes."""

    nodes: list[tuple[Node, str]]  # each, with the version of its result the body read
    lost: str  # why one of them cannot be made again ("" if all can): the node is stale then


def prepare(root: Task[Any, Any]) -> Prepared:
    """Build the graph of `root`, fingerprint each class in it, and find the input files.

    Runs every ``build_task`` and walks the classes' code: call it off the event loop.

    Raises:
        GraphError: the graph cannot be built.
    """
    graph = build_graph(root)
    prepared = Prepared(graph, {}, {})
    note(graph, prepared.fingerprints, prepared.inputs)
    return prepared


def note(
    nodes: Iterable[Node], fingerprints: dict[type, Fingerprint], inputs: dict[str, tuple[File, list[Node]]]
) -> None:
    """Fingerprint the classes of `nodes` missing from `fingerprints`; add their input files to `inputs`."""
    for node in nodes:
        cls = type(node.task)
        if cls not in fingerprints:
            fingerprints[cls] = fingerprint(cls)
        if FILE_MARK in node.key:  # rarely: only then ask the task
            for file in node.task.__af_files__():
                inputs.setdefault(str(file.path), (file, []))[1].append(node)


def add_awaited(
    parents: Iterable[Node],
    records: Mapping[str, Record],
    known: dict[str, Node],
    awaited: dict[Node, Awaited],
) -> list[Node]:
    """Make again the tasks that the records of `parents` say their bodies awaited, into `awaited`.

    Those `known` (by key) lacks are built and added to it, with their upstream. Runs their
    ``build_task``: call it off the event loop.

    Returns:
        The new nodes, deps first.
    """
    added: list[Node] = []
    for parent in parents:
        record = records.get(parent.key)
        if record is None or record.awaited is None:
            continue
        try:
            pairs = decode(record.awaited)
            tasks = [task for task, _ in pairs if not isinstance(task, str)]
            roots, new = build_more(tasks, known)
        except Exception as exc:  # a class renamed, a build that raises now: stale
            awaited[parent] = Awaited(
                [], f"a task it awaited cannot be made again ({type(exc).__name__}: {exc})"
            )
            continue
        added.extend(new)
        made = iter(roots)
        lost = [task for task, _ in pairs if isinstance(task, str)]
        nodes = [(next(made), version) for task, version in pairs if not isinstance(task, str)]
        why = (
            f"{lost[0]} was kept by its key alone (its class or arguments cannot be pickled)" if lost else ""
        )
        awaited[parent] = Awaited(nodes, why)
    return added


def order(nodes: list[Node], awaited: dict[Node, Awaited]) -> list[Node]:
    """Order `nodes` (deps first) so that each also follows the nodes it awaited last time.

    Records made by different code may await each other in a cycle: the nodes in it
    (whose results cannot all be current) lose what they awaited and are stale.
    """
    members = set(nodes)
    early = _awaited_first(nodes, awaited, members)
    if early is not None:
        return [n for n in nodes if n in early] + [n for n in nodes if n not in early]
    while True:
        waits: dict[Node, int] = {}
        after: dict[Node, list[Node]] = {}
        for node in nodes:
            before = [d for d in node.deps if d in members]
            found = awaited.get(node)
            if found is not None:
                before.extend(n for n, _ in found.nodes if n in members)
            waits[node] = len(before)
            for first in before:
                after.setdefault(first, []).append(node)
        out = [n for n in nodes if waits[n] == 0]
        for node in out:  # grows while it is read
            for later in after.get(node, ()):
                waits[later] -= 1
                if waits[later] == 0:
                    out.append(later)
        if len(out) == len(nodes):
            return out
        for node in nodes:
            if waits[node] and node in awaited:
                awaited[node] = Awaited([], "the tasks it awaited await it in turn")


def add_inputs(
    inputs: Mapping[str, tuple[File, list[Node]]],
    digests: Mapping[str, str],
    problems: Mapping[str, str],
    unusable: dict[Node, InputFileError] | None = None,
) -> None:
    """Make the content digest of each input file part of what its nodes are made from.

    Args:
        inputs: the files and the nodes taking each, from `prepare`.
        digests: each file's content digest, by absolute path.
        problems: why a file has none ("does not exist", "cannot be read (...)").
        unusable: if given, where the error of a file without a digest goes, for each of
            its nodes (which are stale then: their records were made with a digest), instead
            of being raised. For the tasks bodies awaited last time: they may not be awaited again.

    Raises:
        InputFileError: a file has no digest (and no `unusable` is given).
    """
    for path in sorted(inputs):  # sorted: each node's tokens in one order, run after run
        file, nodes = inputs[path]
        digest = digests.get(path)
        if digest is None:
            error = InputFileError(
                f"{nodes[0].task!r}: its input {file!r} {problems.get(path, 'does not exist')} "
                f"(looked for {path}); create it, or fix the path (a relative path is from the "
                "directory the task was made in)",
                task=repr(nodes[0].task),
                path=path,
            )
            if unusable is None:
                raise error
            unusable.update(dict.fromkeys(nodes, error))
            continue
        token = "F" + digest
        for node in nodes:
            node.consts = f"{node.consts}|{token}" if node.consts else token


def plan(
    nodes: Iterable[Node],
    records: Mapping[str, Record],
    fingerprints: Mapping[type, Fingerprint],
    *,
    detect: bool,
    made_where: Mapping[str, str] | None = None,
    awaited: Mapping[Node, Awaited] | None = None,
) -> list[Node]:
    """Mark every node fresh or stale, deps first; return the stale ones, in order.

    A fresh node gets the version of its record; a stale one the reason why (`Node.why`).
    A dep outside `nodes` (of a graph that grows while it runs) counts as fresh when it
    is fresh or done; else its dependents must be marked UPSTREAM_STALE before.

    Args:
        nodes: the nodes, deps (and the nodes they awaited, see `order`) first.
        records: the index's record of each node that has one, by key.
        fingerprints: each class's, from `prepare`.
        detect: whether a change of code makes a node stale (``detect_source_change``).
        made_where: without `detect`, the identity (`Fingerprint.identity`) of the class
            that made each record's fingerprint (`Record.source`); unknown ones are stale.
        awaited: what the bodies of nodes awaited last time (see `add_awaited`).
    """
    digests = {cls: f.digest for cls, f in fingerprints.items()}
    identities = {cls: f.identity for cls, f in fingerprints.items()}
    where = made_where or {}
    stale: list[Node] = []
    for node in nodes:  # the hot loop of a warm run: one pass, no calls per dep
        record = records.get(node.key)
        if record is None:
            node.why = NO_RESULT
        elif detect and record.source != digests[type(node.task)]:
            node.why = CODE_CHANGED
        elif not detect and where.get(record.source) != identities[type(node.task)]:
            node.why = ELSEWHERE
        elif node.why != UPSTREAM_STALE:  # else a dep marked it, below
            if record.deps != node_signature(node, keep=True):
                node.why = INPUTS_CHANGED
            elif awaited and not unchanged(awaited.get(node)):
                node.why = DYNAMIC_CHANGED
            else:
                node.state = FRESH
                node.version = record.version
                continue
        node.state = STALE
        stale.append(node)
        for dependent in node.dependents:
            dependent.why = UPSTREAM_STALE
    return stale


def _awaited_first(nodes: list[Node], awaited: dict[Node, Awaited], members: set[Node]) -> set[Node] | None:
    """Return the nodes awaited by nodes of `nodes`, with their upstream, if moving them first orders `nodes`.

    It does unless one of them awaited tasks in turn (then None: `order` sorts the whole).
    Moved first in their order, each still follows its deps (all among them); every other
    node follows its deps too, and a node that awaited them follows them.
    """
    early: set[Node] = set()
    stack = [n for p in nodes if p in awaited for n, _ in awaited[p].nodes if n in members]
    while stack:
        node = stack.pop()
        if node in early:
            continue
        if node in awaited:
            return None
        early.add(node)
        stack.extend(d for d in node.deps if d in members)
    return early


def unchanged(awaited: Awaited | None) -> bool:
    """Tell whether the tasks a body awaited (if any) are fresh, with the results it read."""
    if awaited is None:
        return True
    return not awaited.lost and all(n.state in (FRESH, DONE) and n.version == v for n, v in awaited.nodes)


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
    if not node.deps and not node.consts:  # `signature`'s answer, without its list: every leaf asks
        value = _NOTHING
    else:
        value = signature([d.version or "" for d in node.deps], node.consts)
    if keep:
        node.signature = value
    return value


def signature(dep_versions: list[str], consts: str) -> str:
    """Hash the versions of a node's deps and its Const values, as its record keeps them."""
    if not dep_versions and not consts:
        return _NOTHING  # a node reading nothing, as every leaf: the same hash, made once
    return blake2b("\0".join([*dep_versions, consts]).encode(), digest_size=12).hexdigest()


_NOTHING = blake2b(b"", digest_size=12).hexdigest()
