"""Expand a root task into nodes and edges with an explicit work-list. No I/O here.

Every `build_task` runs once per distinct node (same class and arguments = same node),
before anything runs. Unset requirements, tasks kept in undeclared attributes, builds
that raise and cycles are reported here, naming the task and the attribute. Nothing
recurses on the Python stack, so a chain 10,000 deep builds like a fan-out of 100,000.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import BuildError, CycleError, MissingRequirementError, UndeclaredRequirementError
from ._requires import Const, requirements_of, sources_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._task import Task

MISSING: Any = object()  # a node's value that is not in memory (None is a valid result)

# Node states. The plan (`_plan.py`) makes every node FRESH (to be reused) or STALE (to be
# run). The scheduler completes a fresh node (DONE) once its deps are; a stale one goes,
# once its deps are done, through QUEUED (waiting for a worker), PARKED if it finds one of
# its channels full (waiting for a slot, holding no worker; see `_limits.py`), and RUNNING,
# to DONE or FAILED.
STALE, FRESH, QUEUED, PARKED, RUNNING, DONE, FAILED = range(7)


class Node:
    """One node of the graph, plus the per-run state the plan and the scheduler keep on it."""

    __slots__ = (
        "consts",
        "consumers",
        "dependents",
        "deps",
        "key",
        "remaining",
        "signature",
        "state",
        "task",
        "value",
        "version",
        "why",
    )

    def __init__(self, task: Task[Any, Any]) -> None:
        self.task = task
        self.key: str = task.__af_key__
        self.deps: tuple[Node, ...] = ()  # in the order first required; none: the shared ()
        self.dependents: list[Node] = []
        self.consts = ""  # tokens of the Const values the task reads, for staleness
        # Filled in by the plan:
        self.state = STALE
        self.why = 0  # why it is stale, one of _plan's reasons; 0 while it is not
        self.version: str | None = None  # its result's, once known
        self.signature: str | None = None  # the hash of its inputs' versions, once final
        # Filled in by the scheduler:
        self.remaining = 0  # deps not done yet
        self.consumers = 0  # dependents (and callers) that still need its value
        self.value: Any = MISSING

    def __repr__(self) -> str:
        return f"<Node {self.task!r}>"


class Graph:
    """The nodes reachable from a root, in an order where every node follows its deps."""

    def __init__(self, root: Node, order: list[Node]) -> None:
        self.root = root
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.order)


def _build(task: Task[Any, Any]) -> dict[str, Any]:
    """Run `task`'s build_task (once per task object); return its requirements by name."""
    try:
        task.__af_build__()
    except Exception as exc:
        raise BuildError(f"{task!r}: build_task raised {type(exc).__name__}: {exc}", task=repr(task)) from exc
    reqs = requirements_of(task)
    for name in type(task).__af_requires__:
        if name not in reqs:
            raise MissingRequirementError(
                f"{task!r}: requirement {name!r} was not set by build_task; assign a task "
                f"or Const(value) to self.{name}",
                task=repr(task),
                attribute=name,
            )
    undeclared = task.__af_undeclared__()
    if undeclared is not None:
        name, held, declaration = undeclared
        raise UndeclaredRequirementError(
            f"{task!r}: attribute {name!r} holds {held} but is not a declared requirement, so "
            f"run_task would read it as it is, not the result it stands for; declare it: {declaration}",
            task=repr(task),
            attribute=name,
        )
    return reqs


def build_more(tasks: list[Task[Any, Any]], known: dict[str, Node]) -> tuple[list[Node], list[Node]]:
    """Build the nodes of `tasks` (and upstream) that `known` lacks, linking them to the known ones.

    For a graph that grows while it runs: `known` (by key) is updated with the new nodes,
    which are linked as dependents of their known deps too.

    Returns:
        The nodes of `tasks`, in order, and the new nodes, deps first.

    Raises:
        BuildError, MissingRequirementError, UndeclaredRequirementError, CycleError: as
            `build_graph`; nothing is added to `known` then.
    """
    roots: list[Node] = []
    new: dict[str, Node] = {}
    stack: list[Node] = []
    for task in tasks:
        key = task.__af_key__
        node = known.get(key) or new.get(key)
        if node is None:
            node = new[key] = Node(task)
            stack.append(node)
        roots.append(node)
    while stack:
        node = stack.pop()
        _expand(node, known, new, stack)
    order = _topological_order(new, linked=known)
    known.update(new)
    return roots, order


def build_graph(root: Task[Any, Any]) -> Graph:
    """Build every node upstream of `root` (included) and check that the graph is acyclic.

    Raises:
        BuildError: a `build_task` raised; the original is the ``__cause__``.
        MissingRequirementError: a declared requirement was left unset.
        UndeclaredRequirementError: a task keeps tasks in an attribute that is not a requirement.
        CycleError: tasks require each other in a cycle.
    """
    root_node = Node(root)
    nodes: dict[str, Node] = {root_node.key: root_node}
    stack = [root_node]
    while stack:
        _expand(stack.pop(), _NONE_KNOWN, nodes, stack)
    return Graph(root_node, _topological_order(nodes))


# What `build_graph` knows before it starts (read only): one dict lookup per edge, not a call.
_NONE_KNOWN: dict[str, Node] = {}


def _expand(node: Node, known: dict[str, Node], nodes: dict[str, Node], stack: list[Node]) -> None:
    """Build `node`'s task and set its deps: `known` ones, else in `nodes`, else new (pushed on `stack`)."""
    task = node.task
    reqs = _build(task)
    names = type(task).__af_requires__
    if not names:
        return
    consts: list[str] = []
    deps: list[Node] = []
    for name in names:
        for source in sources_of(reqs[name]):
            if isinstance(source, Const):
                consts.append(source.token)
                continue
            task_source: Task[Any, Any] = source  # type: ignore[assignment]  # not a Const: a Task
            key = task_source.__af_key__
            dep = known.get(key) or nodes.get(key)
            if dep is None:
                dep = nodes[key] = Node(task_source)
                stack.append(dep)
            deps.append(dep)
    node.deps = tuple(dict.fromkeys(deps))  # a task read twice is one dep
    if consts:
        node.consts = "|".join(consts)


def _topological_order(nodes: dict[str, Node], linked: dict[str, Node] | None = None) -> list[Node]:
    """Kahn's algorithm: every node after its deps; a leftover means a cycle.

    With `linked`, deps already known there (and ordered before) count as placed; the
    new nodes are linked as their dependents only once the order is found.
    """
    if linked is None:  # every dep is among `nodes`: no need to ask
        for node in nodes.values():
            node.remaining = len(node.deps)
            for dep in node.deps:
                dep.dependents.append(node)
    else:
        for node in nodes.values():
            node.remaining = 0
            for dep in node.deps:
                if dep.key in nodes:
                    node.remaining += 1
                    dep.dependents.append(node)
    order = [n for n in nodes.values() if n.remaining == 0]
    for node in order:  # grows while it is read
        for dependent in node.dependents:
            dependent.remaining -= 1
            if dependent.remaining == 0:
                order.append(dependent)
    if len(order) < len(nodes):
        raise _cycle_error([n for n in nodes.values() if n.remaining > 0])
    if linked is not None:
        for node in nodes.values():
            for dep in node.deps:
                if dep.key not in nodes:
                    dep.dependents.append(node)
    return order


def _cycle_error(left: list[Node]) -> CycleError:
    # Every leftover node has a leftover dep; walking deps must revisit a node.
    pending = set(left)
    node = left[0]
    path: list[Node] = []
    seen: dict[Node, int] = {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in node.deps if d in pending)
    cycle = path[seen[node] :]
    steps = [
        f"{n.task!r}.{_attribute_to(n, nxt)}" for n, nxt in zip(cycle, cycle[1:] + cycle[:1], strict=False)
    ]
    names = [repr(n.task) for n in cycle]
    return CycleError(
        f"tasks require each other in a cycle: {' -> '.join([*steps, repr(cycle[0].task)])}",
        cycle=names,
    )


def _attribute_to(node: Node, dep: Node) -> str:
    for name, value in requirements_of(node.task).items():
        if any(getattr(s, "__af_key__", None) == dep.key for s in sources_of(value)):
            return name
    raise AssertionError("asyncflow bug: a cycle edge has no requirement attribute")
