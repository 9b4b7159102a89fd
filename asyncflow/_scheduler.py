"""One task group per run: readiness counts, launching, single-flight, failures, stats.

A node is settled when all its deps are: it is *fresh* (as the plan found it before the
run, see `_plan.py`) and is reused without waiting for anything, or it is *stale* and
queued for a small pool of workers: one takes the node's lease, a slot of each of its
limited channels (or parks it until one frees), runs the body through its runner and
queues the result for the cache. Settling is a loop over a queue, never a recursion.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
import warnings
from collections import Counter, deque
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._cache.session import CacheSession, Entry, Unreadable, open_session
from ._capture import CAPTURE, Capture, capturing
from ._collector import collection_for_run
from ._errors import (
    AsyncflowError,
    CacheWarning,
    CycleError,
    InputFileError,
    OptionError,
    TaskFailedError,
    UnstorableResultError,
    WorkflowFailedError,
)
from ._graph import DONE, FAILED, FRESH, MISSING, PARKED, QUEUED, RUNNING, STALE, Node, build_more
from ._limits import Channel, Limits
from ._options import settings_from
from ._plan import (
    UNREADABLE,
    UPSTREAM_STALE,
    Awaited,
    add_awaited,
    add_inputs,
    is_current,
    node_signature,
    note,
    order,
    plan,
    prepare,
    unchanged,
)
from ._recipes import decode, encode
from ._requires import requirements_of, resolve
from ._runners.choose import Runners
from ._sync import BODY, ELSEWHERE
from ._tally import WORK, StatsBuilder

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextvars import Token

    from ._cache.session import Record
    from ._file import File
    from ._options import Settings
    from ._plan import Prepared
    from ._progress import RunProgress
    from ._runners.base import Outcome, Runner
    from ._stats import RunStats
    from ._tally import Work
    from ._task import Task
_POLL_MIN, _POLL_MAX = 0.02, 0.5  # seconds between looks at another process's lease
_TURN = 0.002  # seconds a worker runs quick nodes back to back before yielding to the loop


class _InFlight:
    """A node being computed by a run of this process; other runs wait on it."""

    __slots__ = ("_event", "landed", "owner", "signature", "value", "version")

    def __init__(self, owner: object) -> None:
        self.owner = owner  # the run computing it
        self.signature = ""  # set with the version when the body succeeded
        self.version: str | None = None  # set when the body succeeded
        self.value: Any = MISSING
        self.landed = False
        self._event: anyio.Event | None = None  # made only when another run waits

    async def wait(self) -> None:
        if not self.landed:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    def land(self) -> None:
        self.landed = True
        if self._event is not None:
            self._event.set()


class _Shared:
    """The nodes being computed by the runs of one event loop on one cache directory."""

    __slots__ = ("nodes", "runs")

    def __init__(self) -> None:
        self.nodes: dict[str, _InFlight] = {}
        self.runs = 0  # runs using it: the last one out removes it from _IN_FLIGHT


# (thread, cache directory) -> what its runs compute. Runs in one event loop share it; a
# run in another thread (another loop) relies on the index's leases instead.
_IN_FLIGHT: dict[tuple[int, str], _Shared] = {}


async def run_workflow(root: Task[Any, Any], settings: Settings) -> tuple[Any, Callable[[], RunStats]]:
    """Build the graph of `root`, run what is stale, and return root's result and what makes its stats.

    The stats are made when asked for (`run_with_stats`): a plain `run()` spares the
    making of their dataclasses.

    The run and every attempt of its bodies go into the cache's history (see `_history`).
    The garbage collector passes less often meanwhile (see `_collector`).
    """
    with collection_for_run():
        return await _run_workflow(root, settings)


async def _run_workflow(root: Task[Any, Any], settings: Settings) -> tuple[Any, Callable[[], RunStats]]:
    started = time.perf_counter()
    started_at = time.time()
    prepared = await anyio.to_thread.run_sync(prepare, root)
    value = None
    async with open_session(
        settings.cache_dir, lease_ttl=settings.lease_ttl, keep_runs=settings.keep_runs
    ) as session:
        scheduler = _Scheduler(prepared, settings, session)
        session.begin_run(
            root.__af_key__, repr(root), started_at, _options_record(settings), scheduler.counts
        )
        outcome = "error"  # unless it gets further
        try:
            with scheduler.progress or nullcontext(), capturing():
                value = await scheduler.run()
            outcome = "failed" if scheduler.failures else "ok"
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        except Exception as exc:  # raised below, not wrapped by the session's task group
            scheduler.errors.append(exc)
            outcome = "failed" if isinstance(exc, TaskFailedError) else "error"
        finally:
            elapsed = time.perf_counter() - started
            counts = {**scheduler.stats.totals(), "total": len(scheduler.graph.order)}
            session.end_run(time.time(), outcome, json.dumps(counts))
    scheduler.raise_failures()
    return value, partial(scheduler.stats.freeze, elapsed)


def _options_record(settings: Settings) -> str:
    """The options that decide what a run runs and where, as JSON for its history."""
    executor = settings.executor if isinstance(settings.executor, str) else type(settings.executor).__name__
    return json.dumps(
        {
            "rate_limits": dict(settings.rate_limits),
            "max_workers": settings.max_workers,
            "executor": executor,
            "prefixes": {ch: str(where) for ch, where in settings.prefixes.items()},
            "hosts": {ch: str(host) for ch, host in settings.hosts.items()},
            "detect_source_change": settings.detect_source_change,
            "on_error": settings.on_error,
        },
        sort_keys=True,
    )


class _Scheduler:
    def __init__(self, prepared: Prepared, settings: Settings, session: CacheSession) -> None:
        self.graph = graph = prepared.graph
        self.fingerprints = prepared.fingerprints
        self.sources = {cls: f.digest for cls, f in prepared.fingerprints.items()}  # what records keep
        self.inputs = prepared.inputs
        self.settings = settings
        self.session = session
        self.started = time.perf_counter()
        self.limits = Limits(settings.rate_limits)
        self.runners = Runners(settings)
        self.records: dict[str, Record] = {}
        self.failures: list[TaskFailedError] = []
        self.errors: list[Exception] = []  # not a body's failure: the cache, or a bug
        self._tg: anyio.abc.TaskGroup | None = None
        self._shared_key = (threading.get_ident(), str(session.cache_dir))
        self._shared = _Shared()  # the one other runs use, once this run starts
        # The nodes this run registered are those in `_shared` it owns (see `_mine`): not a
        # dict of their own, which would grow to every stale node of a million-node run.
        self._holders: dict[str, str] = {}  # another process holding the lease of a planned-stale node
        # Versions must be unique per write across processes and runs: a random prefix
        # per run, then a counter (os.urandom per node costs ~20 us). Not `secrets`: it
        # imports hmac and random, milliseconds of a first run, for the same bytes.
        self._version_prefix = os.urandom(8).hex()
        self._written = 0
        self._ready: deque[Node] = deque()  # stale nodes whose deps are done, for workers
        self._spare = 0  # workers started and not busy with a node
        self._busy = 0  # workers running a node
        self._per_class: dict[type, tuple[Runner, tuple[Channel, ...]]] = {}
        self._noted = 0  # fingerprints handed to the session (see `_grow`)
        # Nodes found while the run goes on (`join`): what waits for what, and who holds what.
        self._by_key: dict[str, Node] | None = None  # every node, once a body awaits tasks
        self._waiters: dict[Node, anyio.Event] = {}  # set when the node is done or failed
        self._awaiting: dict[Node, list[Node]] = {}  # a running body -> the nodes it awaits
        self._holding: dict[Node, tuple[Channel, ...]] = {}  # a running node -> its channels' slots
        self._failed: dict[Node, TaskFailedError] = {}
        # What running bodies awaited, for their records: {awaited key: (its task, the version read)}.
        self._dynamic: dict[Node, dict[str, tuple[Task[Any, Any], str]]] = {}
        self._awaited: dict[Node, Awaited] = {}  # what bodies awaited last time, as their records say
        self.progress: RunProgress | None = None
        if settings.progress:
            from ._progress import RunProgress  # rich is imported only when it is used

            self.progress = RunProgress(Counter(type(n.task).task_name for n in graph))
        self.stats = StatsBuilder(self.progress)  # it tells the progress display too

    # The run.

    async def run(self) -> Any:
        graph = self.graph
        stale = await self._plan()
        self._note_graph(stale)
        shared = self._shared = _IN_FLIGHT.get(self._shared_key) or self._shared
        _IN_FLIGHT[self._shared_key] = shared
        shared.runs += 1
        try:
            await self._take_leases(stale)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._settle([n for n in graph if not n.deps])
            return await self._root_value()
        finally:
            self._count_skipped()
            for key, flight in [(k, f) for k, f in shared.nodes.items() if f.owner is self]:
                self._land(key, flight)  # wake runs waiting on leftovers
            shared.runs -= 1
            if shared.runs == 0:
                del _IN_FLIGHT[self._shared_key]
            with anyio.CancelScope(shield=True):  # e.g. SSH connections, also on cancel
                await self.runners.aclose()

    def counts(self) -> dict[str, int]:
        """Return the run's counts so far, for its history: those of `RunStats`, nodes in all, bodies running."""
        return {**self.stats.totals(), "total": len(self.graph.order), "running": self._busy}

    async def _root_value(self) -> Any:
        """Return the root's result (None if it failed), computing it again while its cached one cannot be read."""
        root = self.graph.root
        while root.state == DONE and root.value is MISSING:
            assert root.version is not None, "asyncflow bug: the root is done without a version"
            value = await self.session.load(root.key, root.version)
            if not isinstance(value, Unreadable):
                return value
            if await self._unreadable(root, root.version, value):
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    self._settle([root])
        return root.value if root.state == DONE else None

    # Tasks a running body awaits: they join this run.

    async def join(self, parent: Node, tasks: list[Task[Any, Any]], options: dict[str, Any]) -> list[Any]:
        """Run `tasks` as part of this run for the body of `parent`; return their results in order.

        The graph grows by the nodes not in it yet (fresh ones are reused, stale ones queued
        as any other, under the same limits, leases and `on_error`); nodes already in the
        run are awaited, not computed again. While it waits, `parent` lends the slots of its
        limited channels (its tasks may need them) and takes them back before it goes on.

        Raises:
            OptionError: `options` ask for something else than this run does.
            GraphError: the tasks' graph cannot be built, or awaiting them would be a cycle.
            TaskFailedError: an awaited task failed.
        """
        self._check_options(options)
        roots, new = build_more(tasks, self._known())
        self._check_cycle(parent, roots)
        stale: list[Node] = []
        if new:
            self.graph.order.extend(new)
            stale = await self._plan_new(new)
            await self._take_leases(stale)  # in one go, as before the run
        self.session.note_graph(new, stale, [(parent, roots)])
        for root in roots:
            root.consumers += 1  # the body reads it
        self._settle([n for n in new if n.remaining == 0])
        try:
            values = await self._wait_for(parent, roots)
        finally:
            for root in roots:
                root.consumers -= 1
        awaited = self._dynamic.setdefault(parent, {})
        for root in roots:
            assert root.version is not None, "asyncflow bug: an awaited node is done without a version"
            awaited[root.key] = (root.task, root.version)
            if root.consumers == 0:
                root.value = MISSING  # nobody else needs it in memory
        return values

    def _check_options(self, options: dict[str, Any]) -> None:
        if not options:
            return
        asked = settings_from(options)
        for name in options:
            if getattr(asked, name) != getattr(self.settings, name):
                raise OptionError(
                    f"{name}={options[name]!r}: a task awaited inside a body joins the run of that "
                    f"body, whose {name} is {getattr(self.settings, name)!r}; leave the option out"
                )

    def _known(self) -> dict[str, Node]:
        if self._by_key is None:
            self._by_key = {n.key: n for n in self.graph}
        return self._by_key

    def _check_cycle(self, parent: Node, roots: list[Node]) -> None:
        """Refuse to let `parent` wait for nodes that cannot finish before it does."""
        came_from: dict[Node, Node | None] = {}
        stack: list[Node] = []
        for root in roots:
            if root not in came_from and root.state not in (DONE, FAILED):
                came_from[root] = None
                stack.append(root)
        while stack:
            node = stack.pop()
            if node is parent:
                path = [node]
                step = came_from[node]
                while step is not None:
                    path.append(step)
                    step = came_from[step]
                names = [repr(parent.task), *(repr(n.task) for n in reversed(path))]
                raise CycleError(
                    f"{parent.task!r} awaits tasks that wait for it: {' -> '.join(names)}; "
                    "a body cannot await its own result",
                    cycle=names[:-1],
                )
            for nxt in (*node.deps, *self._awaiting.get(node, ())):
                if nxt not in came_from and nxt.state not in (DONE, FAILED):
                    came_from[nxt] = node
                    stack.append(nxt)

    async def _plan_new(self, new: list[Node]) -> list[Node]:
        """Plan nodes found while the run goes on (deps first), as `_plan` does before it; return the stale ones.

        Sets their counts, counting them as readers of the known nodes they read. A node
        whose record says its body awaited tasks is fresh only if this run has them all,
        done or fresh, with the results it read (see `_awaited_in_run`): else its body runs
        again, and finds the tasks it awaits in the cache.
        """
        inputs: dict[str, tuple[File, list[Node]]] = {}
        note(new, self.fingerprints, inputs)
        self._note_fingerprints()
        if inputs:
            digests = await self.session.digest_inputs(list(inputs))
            add_inputs(inputs, digests.digests, digests.problems)
        records = await self.session.lookup([n.key for n in new])
        self.records.update(records)
        for key, record in records.items():
            if record.awaited is not None:
                self._awaited[self._known()[key]] = self._awaited_in_run(record.awaited)
        members = set(new)
        for node in new:  # a known dep that is still to run will have a new version
            if any(d not in members and d.state not in (FRESH, DONE) for d in node.deps):
                node.why = UPSTREAM_STALE
        detect = self.settings.detect_source_change
        made_where = await self._made_where(new)
        stale = plan(
            new, records, self.fingerprints, detect=detect, made_where=made_where, awaited=self._awaited
        )
        for node in new:
            # Add, not set: bodies that awaited it while it was planned already count;
            # dependents other joins linked meanwhile count themselves (known deps, below).
            node.consumers += sum(1 for d in node.dependents if d in members)
            node.remaining = 0
            for dep in node.deps:
                if dep not in members:
                    dep.consumers += 1  # a known node: it now has one more reader
                if dep.state != DONE:
                    node.remaining += 1
        if self.progress is not None:
            self.progress.grow(Counter(type(n.task).task_name for n in new))
        return stale

    async def _wait_for(self, parent: Node, roots: list[Node]) -> list[Any]:
        """Wait until every root is done, lending `parent`'s slots meanwhile; return their results."""
        lent = self._holding.get(parent, ())
        cancelled = False
        try:
            while True:
                pending = [r for r in roots if r.state not in (DONE, FAILED)]
                for root in pending:  # under on_error="continue", a failure upstream never ends
                    failed = self._failed_upstream(root)
                    if failed is not None:
                        raise TaskFailedError(
                            f"{root.task!r} cannot run: its upstream {failed.task!r} failed",
                            task=repr(root.task),
                        ) from self._failed[failed]
                if pending:
                    if lent and parent in self._holding:
                        del self._holding[parent]
                        self._unpark(self.limits.give_back(lent))
                        self._ensure_spare()
                    self._awaiting[parent] = pending
                    try:
                        for node in pending:
                            if node.state in (DONE, FAILED):  # while this waited for another
                                continue
                            event = self._waiters.get(node)
                            if event is None:
                                event = self._waiters[node] = anyio.Event()
                            await event.wait()
                    finally:
                        del self._awaiting[parent]
                failed = next((r for r in roots if r.state == FAILED), None)
                if failed is not None:
                    raise self._failed[failed]
                if await self._load_values(roots):
                    return [r.value for r in roots]
        except anyio.get_cancelled_exc_class():
            cancelled = True  # its slots stay lent: the node ends holding none
            raise
        finally:
            if lent and parent not in self._holding and not cancelled:
                await self._take_back(lent)
                self._holding[parent] = lent

    async def _load_values(self, roots: list[Node]) -> bool:
        """Load the cached results of done `roots`; False if some must be computed again first."""
        missing = [r for r in dict.fromkeys(roots) if r.value is MISSING and r.state == DONE]
        if not missing:
            return True
        wanted = [(r.key, r.version or "") for r in missing]
        loaded = await self.session.load_many(wanted)
        again = False
        for node, (_, version), value in zip(missing, wanted, loaded, strict=True):
            if node.version != version or node.state != DONE:
                again = True
            elif isinstance(value, Unreadable):
                again = True
                if await self._unreadable(node, version, value):
                    self._settle([node])
            elif node.value is MISSING:
                node.value = value
        return not again

    async def _take_back(self, channels: tuple[Channel, ...]) -> None:
        """Take a slot of each of `channels` again, queueing behind parked nodes for a full one."""
        while True:
            full = self.limits.take(channels)
            if full is None:
                return
            waiter = _SlotWaiter()
            full.parked.append(waiter)
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter in full.parked:
                    full.parked.remove(waiter)
                elif waiter.event.is_set():  # woken for a slot it will not take: pass it on
                    self._unpark(self.limits.unblocked([full]))
                    self._ensure_spare()
                raise

    def _failed_upstream(self, node: Node) -> Node | None:
        """Return a failed node that `node` (not done) waits for, if any."""
        seen = {node}
        stack = [node]
        while stack:
            for dep in stack.pop().deps:
                if dep.state == FAILED:
                    return dep
                if dep.state != DONE and dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        return None

    def _wake_downstream(self, failed: Node) -> None:
        """Wake the bodies awaiting nodes that now wait for `failed` in vain."""
        seen = {failed}
        stack = [failed]
        while stack:
            for dependent in stack.pop().dependents:
                if dependent not in seen:
                    seen.add(dependent)
                    self._wake(dependent)
                    stack.append(dependent)

    def _wake(self, node: Node) -> None:
        event = self._waiters.pop(node, None)
        if event is not None:
            event.set()

    def raise_failures(self) -> None:
        """Raise what went wrong, once the cache has kept what went right."""
        if self.errors:
            raise self.errors[0]
        if self.failures:
            if self.settings.on_error == "cancel":
                raise self.failures[0]
            raise WorkflowFailedError(f"{len(self.failures)} task(s) failed", self.failures)

    async def _plan(self) -> list[Node]:
        """Plan which nodes are fresh (see `_plan`) before the run, set each node's counts; return the stale ones.

        The tasks that bodies awaited last time are planned with them (see `_grow`); those
        found fresh join the graph (they are reused), the stale ones do not: a body that
        runs again awaits what it awaits now, and those tasks join the run then.
        """
        graph = self.graph
        nodes = await self._grow(graph.order, self.inputs)
        detect = self.settings.detect_source_change
        made_where = await self._made_where(nodes)
        stale = plan(
            nodes,
            self.records,
            self.fingerprints,
            detect=detect,
            made_where=made_where,
            awaited=self._awaited,
        )
        if len(nodes) > len(graph.order):
            static = set(graph.order)
            dropped = {n for n in stale if n not in static}
            for dep in {d for n in dropped for d in n.deps if d not in dropped}:
                dep.dependents = [n for n in dep.dependents if n not in dropped]
            known = self._known()
            for node in dropped:
                del known[node.key]
            graph.order = [n for n in nodes if n not in dropped]
            stale = [n for n in stale if n in static]
            if self.progress is not None:
                self.progress.grow(Counter(type(n.task).task_name for n in graph.order if n not in static))
        for node in graph:
            node.remaining = len(node.deps)
            node.consumers = len(node.dependents)
        graph.root.consumers += 1  # the caller reads the root's result
        return stale

    def _note_graph(self, stale: list[Node]) -> None:
        """Give the run's history its graph as planned, with what the reused nodes' bodies awaited."""
        awaited: list[tuple[Node, list[Node]]] = []
        if self._awaited:
            known = self._known()
            for parent, last in self._awaited.items():
                children = [n for n, _ in last.nodes if known.get(n.key) is n]
                if children and known.get(parent.key) is parent:
                    awaited.append((parent, children))
        self.session.note_graph(list(self.graph.order), stale, awaited)

    async def _grow(self, nodes: list[Node], inputs: dict[str, tuple[File, list[Node]]]) -> list[Node]:
        """Read the records of `nodes` (hashing their `inputs` first), adding the tasks their bodies awaited.

        Those tasks are made again and added with their upstream (`_plan.add_awaited`), then
        the tasks their own records say they awaited, and so on. An input file of theirs
        that is gone makes them stale, not the run fail: they may not be awaited again.

        Returns:
            `nodes` and the nodes added, in the order to plan them (`_plan.order`).
        """
        found = nodes
        more: list[Node] = nodes
        unusable: dict[Node, InputFileError] | None = None  # the graph's own inputs must be there
        while True:
            if inputs:
                digests = await self.session.digest_inputs(list(inputs))
                add_inputs(inputs, digests.digests, digests.problems, unusable)
            records = await self.session.lookup([n.key for n in more])
            if self.records:
                self.records.update(records)
            else:  # the first lookup, of every node: kept as it is, not copied (a million entries)
                self.records = records
            dynamic = [key for key, record in records.items() if record.awaited is not None]
            if not dynamic:
                break
            known = self._known()
            parents: list[Node] = [known[key] for key in dynamic]
            inputs = {}
            more = await anyio.to_thread.run_sync(self._add_awaited, parents, inputs)
            found = [*found, *more]
            unusable = {}
        self._note_fingerprints()
        return found if found is nodes else order(found, self._awaited)

    def _add_awaited(self, parents: list[Node], inputs: dict[str, tuple[File, list[Node]]]) -> list[Node]:
        """Add the tasks the records of `parents` say their bodies awaited (see `_plan.add_awaited`)."""
        added = add_awaited(parents, self.records, self._known(), self._awaited)
        note(added, self.fingerprints, inputs)
        return added

    def _note_fingerprints(self) -> None:
        """Hand the session the fingerprints of the classes met since the last time (see `_plan.note`)."""
        if len(self.fingerprints) > self._noted:
            added = list(self.fingerprints.items())[self._noted :]
            self._noted = len(self.fingerprints)
            self.sources.update((cls, f.digest) for cls, f in added)
            self.session.note_fingerprints(f for _, f in added)  # each is written with its first result

    def _awaited_in_run(self, awaited: bytes) -> Awaited:
        """The tasks a record's body awaited (`Record.awaited`), as the nodes this run has of them.

        One this run does not have makes the record's node stale (when in doubt, compute):
        its body runs again, and finds those it awaits in the cache.
        """
        try:
            pairs = decode(awaited)
        except Exception as exc:  # a class renamed, ...: its node runs again
            return Awaited([], f"a task it awaited cannot be made again ({type(exc).__name__}: {exc})")
        known = self._known()
        nodes: list[tuple[Node, str]] = []
        for task, version in pairs:
            node = known.get(task if isinstance(task, str) else task.__af_key__)
            if node is None:
                return Awaited([], f"{task!r} was not part of this run when it was planned")
            nodes.append((node, version))
        return Awaited(nodes, "")

    async def _made_where(self, nodes: list[Node]) -> dict[str, str] | None:
        """Without ``detect_source_change``: which file's class made the records of `nodes`."""
        if self.settings.detect_source_change:
            return None
        records = self.records
        return await self.session.made_where({records[n.key].source for n in nodes if n.key in records})

    async def _take_leases(self, stale: list[Node]) -> None:
        """Register the planned-stale nodes in this process and lease them, in one go."""
        keys: list[str] = []
        shared = self._shared.nodes
        for node in stale:
            key = node.key
            if key in shared:  # another run of this process has it
                continue
            shared[key] = _InFlight(self)
            keys.append(key)
        if not keys:
            return
        outcomes = await self.session.acquire_many(keys)
        for key, (holder, record) in zip(keys, outcomes, strict=True):
            if holder is not None:  # else the lease is ours
                self._holders[key] = holder
            if record is not None:
                self.records[key] = record

    def _mine(self, key: str) -> _InFlight | None:
        """Return the registration of `key` if this run computes it (registered, not landed yet)."""
        flight = self._shared.nodes.get(key)
        return flight if flight is not None and flight.owner is self else None

    def _land(self, key: str, flight: _InFlight) -> None:
        """Publish how `key` ended (a version, or None) to other runs of this process."""
        flight.land()
        shared = self._shared.nodes
        if shared.get(key) is flight:
            del shared[key]

    def _count_skipped(self) -> None:
        for node in self.graph:
            if node.state not in (DONE, FAILED):
                self.stats.skipped(type(node.task).task_name)

    # Settling: fresh nodes complete at once, stale ones queue for the workers.

    def _is_current(self, node: Node, record: Record | None, deps: str) -> bool:
        """Tell whether `record` (written by another run meanwhile) is current for `node`, its deps at `deps`."""
        if not is_current(record, deps, self.sources[type(node.task)]):
            return False
        assert record is not None
        return record.awaited is None or unchanged(self._awaited_in_run(record.awaited))

    def _settle(self, ready: list[Node]) -> None:
        """Complete the fresh nodes among `ready` (and what they make ready); queue the rest."""
        queue = deque(ready)
        done = self._done
        # Counted per class once the loop ends (nothing in it waits or reads the stats):
        # a warm run settles every node here, and a stats call per node cost ~1.5 us.
        reused: dict[type[Task[Any, Any]], int] = {}
        while queue:
            node = queue.popleft()
            if node.state == FRESH:  # its version was set by the plan
                cls = type(node.task)
                reused[cls] = reused.get(cls, 0) + 1
                done(node, queue)
            else:
                node.state = QUEUED
                self._ready.append(node)
        for cls, count in reused.items():
            self.stats.reused(cls.task_name, count)
        self._ensure_spare()

    def _settle_done(self, node: Node) -> None:
        """Mark `node` done, and settle the dependents that became ready."""
        ready: list[Node] = []
        self._done(node, ready)
        if ready:
            self._settle(ready)
        else:  # as `_settle` would end, without its queue: most nodes of a fan-out make none ready
            self._ensure_spare()

    def _ensure_spare(self) -> None:
        """Keep one worker free while nodes wait, so a body that blocks never holds up others.

        Workers are spawned lazily: quick bodies run one after another in a couple of
        workers (a task spawn costs more than a trivial body), while bodies that wait
        (sleep, I/O) each end up with a worker of their own. A node waiting for a slot
        of a full channel holds no worker: it is parked (see `_run_stale`).
        """
        if self._ready and self._spare == 0:
            assert self._tg is not None, "asyncflow bug: launching outside the run's task group"
            # As many spares as workers are busy: when bodies wait, the pool doubles each
            # turn of the loop instead of growing by one.
            for _ in range(min(len(self._ready), max(1, self._busy))):
                self._spare += 1
                self._tg.start_soon(self._worker)

    async def _worker(self) -> None:
        assert self._tg is not None, "asyncflow bug: a worker outside the run's task group"
        scope = self._tg.cancel_scope
        clock = time.perf_counter
        turn_ends = clock() + _TURN
        try:
            while self._ready:
                node = self._ready.popleft()
                self._spare -= 1
                self._busy += 1
                self._ensure_spare()
                try:
                    await self._run_stale(node)
                finally:
                    self._busy -= 1
                self._spare += 1
                # Spare meanwhile (no worker is added for the nodes that wait): results
                # do not pile up in memory faster than the writer takes them.
                await self.session.wait_room()
                # Quick bodies never suspend: yield to the loop once a turn is used up
                # (others get in, cancellation arrives), or at once when the run stops.
                if scope.cancel_called or clock() >= turn_ends:
                    await anyio.lowlevel.checkpoint()
                    turn_ends = clock() + _TURN
            self._spare -= 1
        except Exception as exc:  # the cache failed, or asyncflow has a bug: stop the run
            self.errors.append(exc)
            scope.cancel()

    def _done(self, node: Node, ready: deque[Node] | list[Node]) -> None:
        """Mark `node` done; append the dependents that became ready to `ready`."""
        node.state = DONE
        if self._waiters:
            self._wake(node)
        for dep in node.deps:
            dep.consumers -= 1
            if dep.consumers == 0:
                dep.value = MISSING  # nobody needs it in memory any more
        for dependent in node.dependents:
            dependent.remaining -= 1
            if dependent.remaining == 0:
                ready.append(dependent)

    # A stale node, in a worker.

    async def _run_stale(self, node: Node) -> None:
        """Reuse or compute one stale node, then settle its dependents.

        A node that finds one of its channels full is parked there and the worker moves
        on; when a slot frees, the node comes back through the ready queue, leased
        already, and goes straight for its slots.
        """
        task = node.task
        cls = type(task)
        signature = node_signature(node)
        if node.state != PARKED:
            if await self._reuse_elsewhere(node, signature):
                self.stats.reused(cls.task_name)
                mine = self._mine(node.key)
                if mine is not None:  # tell other runs of this process waiting on it
                    mine.version, mine.value, mine.signature = node.version, node.value, signature
                    self._land(node.key, mine)
                self._settle_done(node)
                return
            # (A node without deps, as every leaf, has nothing to load: no coroutine for it.)
            if node.deps and not await self._load_deps(node):  # it waits for deps computed again
                return
        runner, channels = self._pick(cls)
        if channels:
            full = self.limits.take(channels)
            if full is not None:
                node.state = PARKED
                full.parked.append(node)
                if len(channels) > 1:  # a free slot it passed over may have waiters
                    self._unpark(self.limits.unblocked())
                return
        flight = self._mine(node.key)
        assert flight is not None, "asyncflow bug: computing a node this run did not register"
        if channels:
            self._holding[node] = channels
        try:
            node.state = RUNNING
            self.stats.started(cls.task_name)
            outcome, started, finished = await self._compute(node, runner)
        except anyio.get_cancelled_exc_class():
            self.session.release_nowait(node.key)
            raise
        except TaskFailedError as error:
            self._dynamic.pop(node, None)
            self._fail(node, error)
            return
        else:
            self._written += 1
            flight.version = version = f"{self._version_prefix}{self._written:x}"
            flight.value = outcome.value
            flight.signature = signature
        finally:
            if channels and self._holding.pop(node, None) is not None:  # none: lent, then cancelled
                self._unpark(self.limits.give_back(channels))
            self._land(node.key, flight)
        awaited = self._dynamic.pop(node, None)
        self.session.store_nowait(
            Entry(node.key, self.sources[cls], version, signature, outcome.pickled,
                  cls.__af_options__.compress_level, started, finished,
                  None if awaited is None else encode(awaited.values()))
        )  # fmt: skip
        node.version = version
        node.value = outcome.value
        self._settle_done(node)

    async def _reuse_elsewhere(self, node: Node, signature: str) -> bool:
        """Wait out another run computing `node`; True if its result (or the cache's) fits.

        On False, this run holds the node's lease and must compute it.
        """
        key = node.key
        shared = self._shared.nodes
        must_acquire = not_mine = self._mine(key) is None
        while not_mine:  # another run of this process registered it
            other = shared.get(key)
            if other is None:
                shared[key] = _InFlight(self)
                break
            await other.wait()
            if other.version is not None and other.signature == signature:
                node.version = other.version
                node.value = other.value
                return True
            not_mine = self._mine(key) is None
        holder = self._holders.get(key)
        delay = _POLL_MIN
        while True:
            if must_acquire:
                holder, record = await self.session.acquire(key)
                if holder is None:
                    self._holders.pop(key, None)
                else:
                    self._holders[key] = holder
                if record is not None:
                    self.records[key] = record
            must_acquire = True
            if holder is None:  # the lease is ours
                record = self.records.get(key)
                if not self._is_current(node, record, signature):
                    return False
                assert record is not None
                self.session.release_nowait(key)
                node.version = record.version
                return True
            while await self.session.held(key):  # another process computes it
                await anyio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)

    async def _load_deps(self, node: Node) -> bool:
        """Have the results of `node`'s deps in memory, loading cached ones; False if it must wait.

        A dep whose cached result cannot be read runs again (see `_unreadable`): `node`
        then waits for it, as for any dep, and comes back through the ready queue.
        """
        missing = [dep for dep in node.deps if dep.value is MISSING]
        if not missing:  # (a dep being computed again has no value)
            return True
        missing = [dep for dep in missing if dep.state == DONE]
        wanted: list[tuple[str, str]] = []
        for dep in missing:
            assert dep.version is not None, "asyncflow bug: a dep is done without a version"
            wanted.append((dep.key, dep.version))
        loaded = await self.session.load_many(wanted) if wanted else []
        for dep, (_, version), value in zip(missing, wanted, loaded, strict=True):
            if dep.version != version or dep.state != DONE:
                continue  # another dependent found it unreadable meanwhile
            if isinstance(value, Unreadable):
                if await self._unreadable(dep, version, value):
                    self._settle([dep])
            elif dep.value is MISSING:
                dep.value = value
        waiting = sum(dep.state != DONE for dep in node.deps)
        if waiting:
            node.state = STALE
            node.remaining = waiting
            return False
        return True

    async def _unreadable(self, node: Node, version: str, unreadable: Unreadable) -> bool:
        """Make a done node stale again: its cached result (at `version`) cannot be read.

        Returns whether the caller should settle it (False: another dependent got here first).

        Dependents that counted the node as done wait for it again; those about to load
        it find it not done (see `_load_deps`). Dependents already done were made from
        the old result, which was right when read: they are stale on the next run, as the
        node gets a new version. A damaged entry is removed from the index (with a warning
        naming the node and why) before the node is settled, so nothing takes it for fresh.
        """
        if node.state != DONE or node.version != version:
            return False
        node.state = STALE
        node.why = UNREADABLE
        node.version = None
        node.value = MISSING
        self.records.pop(node.key, None)
        self.stats.unreadable(type(node.task).task_name)
        for dep in node.deps:  # it reads them again
            dep.consumers += 1
        for dependent in node.dependents:
            if dependent.state not in (DONE, FAILED):
                dependent.signature = None  # it will read a new version
                if dependent.remaining > 0:  # it counted the node as done
                    dependent.remaining += 1
        if unreadable.damaged:
            warnings.warn(
                f"{node.task!r}: its cached result cannot be read: {unreadable.reason}; computing it again",
                CacheWarning,
                stacklevel=2,
            )
            await self.session.forget([(node.key, version)])
        return True

    def _inputs(self, node: Node) -> dict[str, Any]:
        """Resolve the requirements of `node`'s task from its deps' results (in memory, see `_load_deps`)."""
        reqs = requirements_of(node.task)
        if not reqs:
            return {}
        by_key = {d.key: d for d in node.deps}
        values: dict[str, Any] = {}
        for name, requirement in reqs.items():
            try:
                values[name] = resolve(requirement, lambda t: by_key[t.__af_key__].value)
            except Exception as exc:  # e.g. an item missing from an upstream result
                raise TaskFailedError(
                    f"{node.task!r} failed reading requirement {name!r} ({requirement!r}): "
                    f"{type(exc).__name__}: {exc}",
                    task=repr(node.task),
                ) from exc
        return values

    def _unpark(self, parked: list[Any]) -> None:
        """Put parked nodes first in the ready queue, in the order they were parked; wake bodies waiting for slots back."""
        nodes: list[Node] = []
        for item in parked:
            if isinstance(item, _SlotWaiter):
                item.event.set()
            else:
                nodes.append(item)
        self._ready.extendleft(reversed(nodes))

    def _pick(self, cls: type[Task[Any, Any]]) -> tuple[Runner, tuple[Channel, ...]]:
        picked = self._per_class.get(cls)
        if picked is None:
            channels = (cls.task_name, *cls.__af_options__.channels)
            picked = self._per_class[cls] = (self.runners.pick(cls), self.limits.for_channels(channels))
        return picked

    async def _compute(self, node: Node, runner: Runner) -> tuple[Outcome, float, float]:
        """Run the body (with retries and timeouts); the node holds its channels' slots."""
        task = node.task
        try:
            values = self._inputs(node)
        except TaskFailedError:
            work = self.stats.attempt(type(task).task_name)
            if work is not None:
                work.begin()  # it fails as a running body does (see `_fail`)
            raise
        body = BODY.set((self, node))  # a task it runs joins this run (see `join`)
        try:
            return await self._attempts(node, runner, values)
        finally:
            BODY.reset(body)
            task.__af_leave__()

    async def _attempts(
        self, node: Node, runner: Runner, values: dict[str, Any]
    ) -> tuple[Outcome, float, float]:
        """Run the body until it succeeds or its retries are spent; note every attempt in the history."""
        task = node.task
        cls = type(task)
        options = cls.__af_options__
        work = self.stats.attempt(cls.task_name)  # None: no progress shown
        attempt = 0
        while True:
            task.__af_enter__(values, self.settings.cache_dir)
            started = time.time()
            t0 = time.perf_counter()
            capture = Capture()
            token = CAPTURE.set(capture)  # what the body prints and logs, in its context only
            begun = None if work is None else WORK.set(work)  # its runner says when it begins
            try:
                if options.timeout is None:
                    outcome = await runner.run(task)
                else:
                    with anyio.fail_after(options.timeout):
                        outcome = await runner.run(task)
            except Exception as exc:
                self._end_attempt(token, work, begun)
                capture.write("".join(traceback.format_exception(exc)))  # its traceback ends its output
                failure = (
                    exc if isinstance(exc, TaskFailedError) else _failure(task, exc, options.timeout, attempt)
                )
                self._note_attempt(
                    node, attempt, started, _place(runner, capture), capture, str(failure).split("\n", 1)[0]
                )
                if isinstance(exc, UnstorableResultError):  # the same value again: no retry
                    raise TaskFailedError(f"{task!r} {exc}", task=repr(task)) from exc.__cause__
                # A job's failure carries its worker's UnstorableResultError as the cause.
                if attempt >= options.retries or isinstance(exc.__cause__, UnstorableResultError):
                    if isinstance(exc, TaskFailedError):  # a runner's own, with its facts
                        raise
                    raise failure from exc
                self.stats.retried(cls.task_name)
                if work is not None:
                    work.began = False  # queued again
                await anyio.sleep(options.retry_delay * options.retry_backoff**attempt)
                attempt += 1
                continue
            except BaseException:  # cancelled: the run is stopping
                self._end_attempt(token, work, begun)
                self._note_attempt(
                    node, attempt, started, _place(runner, capture), capture, None, outcome="cancelled"
                )
                raise
            self._end_attempt(token, work, begun)
            self.stats.ran(cls.task_name, time.perf_counter() - t0)
            ended = time.time()
            # `_note_attempt`, inline: every body that runs passes here.
            self.session.note_attempt(
                (node.key, attempt, started, ended, _place(runner, capture), "ok", None, None), capture
            )
            return outcome, started, ended

    @staticmethod
    def _end_attempt(
        token: Token[Capture | None], work: Work | None, begun: Token[Work | None] | None
    ) -> None:
        """Leave an attempt's context; for the progress, it ran (if its runner never said it began)."""
        CAPTURE.reset(token)
        if work is not None:
            assert begun is not None, "asyncflow bug: an attempt with progress but no context"
            WORK.reset(begun)
            work.begin()

    def _note_attempt(
        self,
        node: Node,
        attempt: int,
        started: float,
        place: str,
        capture: Capture,
        error: str | None,
        *,
        outcome: str = "failed",
    ) -> None:
        """Note a failed (`error`) or cancelled (`outcome`) attempt of `node`'s body in the run's history, with its output."""
        ended = time.time()
        self.session.note_attempt((node.key, attempt, started, ended, place, outcome, error, None), capture)

    def _fail(self, node: Node, error: TaskFailedError) -> None:
        node.state = FAILED
        self._failed[node] = error
        if self._waiters:
            self._wake(node)
            self._wake_downstream(node)
        self.stats.failed(type(node.task).task_name)
        self.failures.append(error)
        self.session.release_nowait(node.key, (type(node.task).task_name, str(error)))
        if self.settings.on_error == "cancel" and self._tg is not None:
            self._tg.cancel_scope.cancel()


async def join_body(
    body: Any, tasks: list[Task[Any, Any]], options: dict[str, Any]
) -> tuple[list[Any], Callable[[], RunStats]]:
    """Run `tasks` for the body that `body` (`_sync.BODY`) names, as part of its run; and what makes its stats so far.

    Raises:
        AsyncflowError: the body runs in another process (a worker process, a job), which cannot join.
    """
    if body is ELSEWHERE:
        names = ", ".join(repr(t) for t in tasks[:3])
        raise AsyncflowError(
            f"{names}: a body running in a worker process or a job cannot run tasks (it has no "
            "access to the run); run the body in this process (async def, or a thread: "
            'executor="thread"), or make those tasks requirements of its task'
        )
    scheduler, node = body
    values = await scheduler.join(node, tasks, options)
    return values, partial(scheduler.stats.freeze, time.perf_counter() - scheduler.started)


class _SlotWaiter:
    """A running body waiting, on a channel's queue, for the slot it lent while it awaited tasks."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = anyio.Event()


def _place(runner: Runner, capture: Capture) -> str:
    """Say where an attempt ran, for the history: its runner's place, and the job it named (if it did)."""
    return f"{runner.place} ({capture.job})" if capture.job else runner.place


def _failure(task: Task[Any, Any], exc: Exception, timeout: float | None, attempt: int) -> TaskFailedError:
    tries = f" (after {attempt + 1} attempts)" if attempt else ""
    if isinstance(exc, TimeoutError) and timeout is not None:
        what = f"timed out after {timeout:g} s"
    else:
        what = f"failed: {type(exc).__name__}: {exc}"
    return TaskFailedError(f"{task!r} {what}{tries}", task=repr(task))
