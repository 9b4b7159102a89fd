"""The event-loop floor: the W2 and W3 DAGs as plain coroutines in one anyio task group.

`run_floor` is the floor the harness compares asyncflow with. `run_native` runs the
same DAG in the backend's own task group (``asyncio.TaskGroup`` or a trio nursery)
instead of anyio's, to show what anyio's ``start_soon`` itself costs per node.
`run_naive_cache` is the anyio floor with the simplest cache there is: one pickle file
per node's result, written cold and read back warm.

No cache, no keys, no hashing, no threads: each node is an ``async def`` started with
``start_soon`` once its deps are done (a readiness count, as a scheduler must keep),
reading its deps' values from memory. What asyncflow costs per node above this is its
own overhead; this is roughly the least any async engine could spend.
"""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class FloorNode:
    """A node: an async body applied to its deps' values."""

    __slots__ = ("body", "dependents", "deps", "remaining", "value")

    def __init__(self, body: Callable[..., Awaitable[Any]], deps: list[FloorNode]) -> None:
        self.body = body
        self.deps = deps
        self.dependents: list[FloorNode] = []
        self.remaining = len(deps)
        self.value: Any = None
        for dep in deps:
            dep.dependents.append(self)


async def run_dag(nodes: list[FloorNode], root: FloorNode) -> Any:
    """Run every node once its deps are done, all in one task group; return root's value."""
    async with anyio.create_task_group() as tg:

        async def run_node(node: FloorNode) -> None:
            node.value = await node.body(*[d.value for d in node.deps])
            for dependent in node.dependents:
                dependent.remaining -= 1
                if dependent.remaining == 0:
                    tg.start_soon(run_node, dependent)

        for node in nodes:
            if not node.deps:
                tg.start_soon(run_node, node)
    return root.value


async def run_native(nodes: list[FloorNode], root: FloorNode, backend: str) -> Any:
    """Like `run_dag`, with `backend`'s native task group instead of anyio's."""
    if backend == "trio":
        import trio

        group: Any = trio.open_nursery()
    else:
        group = asyncio.TaskGroup()  # Python >= 3.11
    async with group as tg:

        def spawn(node: FloorNode) -> None:
            if backend == "trio":
                tg.start_soon(run_node, node)
            else:
                tg.create_task(run_node(node))

        async def run_node(node: FloorNode) -> None:
            node.value = await node.body(*[d.value for d in node.deps])
            for dependent in node.dependents:
                dependent.remaining -= 1
                if dependent.remaining == 0:
                    spawn(dependent)

        for node in nodes:
            if not node.deps:
                spawn(node)
    return root.value


def _leaf(i: int) -> Callable[[], Awaitable[int]]:
    async def leaf() -> int:
        return i

    return leaf


async def _sum(*values: int) -> int:
    return sum(values)


async def _increment(prev: int) -> int:
    return prev + 1


async def _one() -> int:
    return 1


def fan_out(n: int) -> tuple[list[FloorNode], FloorNode]:
    """W2: ``n`` leaves returning ``i`` and one node summing them (n + 1 nodes)."""
    leaves = [FloorNode(_leaf(i), []) for i in range(n)]
    root = FloorNode(_sum, leaves)
    return [*leaves, root], root


def chain(n: int) -> tuple[list[FloorNode], FloorNode]:
    """W3: ``n`` nodes, each adding 1 to the previous one's value (the first returns 1)."""
    nodes = [FloorNode(_one, [])]
    for _ in range(n - 1):
        nodes.append(FloorNode(_increment, [nodes[-1]]))
    return nodes, nodes[-1]


BUILDERS = {"W2": fan_out, "W3": chain}

PEAK = 0  # W4: the most sleepers seen running at once


async def sleepy(n: int, limit: int = 20, seconds: float = 0.05) -> None:
    """W4 as plain coroutines: `n` sleepers in one task group under a CapacityLimiter.

    The floor of W4: what anyio's own timers and limiter cost over the ideal
    ``n * seconds / limit``.
    """
    global PEAK
    limiter = anyio.CapacityLimiter(limit)
    running = 0

    async def sleeper() -> None:
        global PEAK
        nonlocal running
        async with limiter:
            running += 1
            PEAK = max(PEAK, running)
            await anyio.sleep(seconds)
            running -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(sleeper)


async def run_floor(kind: str, n: int, native: str | None = None) -> tuple[Any, int]:
    """Build and run the floor DAG of workload `kind` (``"W2"``, ``"W3"`` or ``"W4"``).

    With `native` (``"asyncio"`` or ``"trio"``, the running backend), use that
    backend's own task group rather than anyio's.

    Returns:
        The root's value and the number of nodes asyncflow would count.
    """
    if kind == "W4":
        await sleepy(n)
        return None, n + 1  # the sleepers and the node gathering them
    nodes, root = BUILDERS[kind](n)
    value = await (run_native(nodes, root, native) if native else run_dag(nodes, root))
    return value, len(nodes)


async def run_naive_cache(kind: str, n: int, cache_dir: str, *, warm: bool) -> tuple[Any, int, int]:
    """The anyio floor with a naive cache: one pickle file per node's result.

    Cold, each node computes its value and writes it to ``<cache_dir>/<kind>-<i>.pkl``
    (`i`: its place in the DAG, as its id); warm, each node reads its file instead (and
    computes only if the file is missing). The files are written and read in the event
    loop's thread, as naive code would.

    Returns:
        The root's value, the number of nodes and how many of them computed.
    """
    nodes, root = BUILDERS[kind](n)
    computed = 0

    def cached(body: Callable[..., Awaitable[Any]], path: Path) -> Callable[..., Awaitable[Any]]:
        async def node(*deps: Any) -> Any:
            nonlocal computed
            if warm:
                try:
                    return pickle.loads(path.read_bytes())  # noqa: ASYNC240 (naive on purpose)
                except FileNotFoundError:
                    pass
            computed += 1
            value = await body(*deps)
            path.write_bytes(pickle.dumps(value))  # noqa: ASYNC240
            return value

        return node

    directory = Path(cache_dir)
    for i, node in enumerate(nodes):
        node.body = cached(node.body, directory / f"{kind}-{i}.pkl")
    value = await run_dag(nodes, root)
    return value, len(nodes), computed
