"""One run's use of the cache: batched reads, leases and writes over one `Index`.

The scheduler leases every node it plans to run in one call (`acquire_many`); a node
that must ask again later (``await session.acquire(key)``) shares a worker-thread call
and a transaction with every request made meanwhile. A run of 10,000 nodes makes a
handful of SQLite transactions, not 10,000. Results are written behind the run
(dependents read them from memory), gathered for a moment so that quick tasks share a
transaction, and flushed before the run returns, also when it fails or is cancelled: a
finished result is never thrown away. One that cannot be written (a full disk) is named
in the run's `CacheError`, and every way out of a run releases its leases.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import anyio

from .._errors import CacheError, UnreadableResultError
from . import blobs, index, paths
from .index import GRAPH_MAX, AttemptRow, Encoded, GraphPart, Index, RunRow, encode_graph

# The door to the cache for a run is this module: it passes on the index's types it uses.
from .index import Attempt as Attempt
from .index import Entry as Entry
from .index import Record as Record

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        Awaitable,
        Callable,
        Collection,
        Coroutine,
        Iterable,
        Sequence,
    )
    from pathlib import Path

    from .._capture import Capture
    from .._graph import Node
    from .._source import Fingerprint
    from .files import Inputs

I = TypeVar("I")  # noqa: E741 - an item
O = TypeVar("O")  # noqa: E741 - its outcome
T = TypeVar("T")

_BATCH_MAX = 5000  # nodes per transaction
# Results queued for writing before the bodies that make them wait for the writer: quick
# bodies outpace the writer's thread, and a million-node run would otherwise hold most
# of its results (with their entries and attempts) in memory, waiting their turn.
_BACKLOG_MAX = 2 * _BATCH_MAX
_SHUTDOWN_GRACE = 30.0  # seconds the final, shielded flush may take
_COALESCE = 0.02  # seconds a write waits for company (a crash loses at most this much more)
_NAMED = 5  # lost results a CacheError names before "and N more"
_SQLITE_FULL = 13  # the error code (sqlite3.SQLITE_FULL from Python 3.11 on)
_COUNT_EVERY = 1.0  # seconds between updates of a running run's counts in the history

log = logging.getLogger("asyncflow")


class _Slot:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Batcher(Generic[I, O]):
    """Coalesce concurrent ``await submit(item)`` calls into calls of ``fn(items)``."""

    def __init__(self, fn: Callable[[list[I]], Awaitable[Sequence[O]]]) -> None:
        self._fn = fn
        self._queue: list[tuple[I, _Slot]] = []
        self._wake = anyio.Event()

    async def submit(self, item: I) -> O:
        slot = _Slot()
        self._queue.append((item, slot))
        self._wake.set()
        await slot.event.wait()
        if slot.error is not None:
            raise slot.error
        return slot.value  # set from fn's outcomes

    async def serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._queue:
                batch, self._queue = self._queue[:_BATCH_MAX], self._queue[_BATCH_MAX:]
                try:
                    outcomes = await self._fn([item for item, _ in batch])
                except Exception as exc:
                    for _, slot in batch:
                        slot.error = exc
                        slot.event.set()
                    continue
                for (_, slot), outcome in zip(batch, outcomes, strict=True):
                    slot.value = outcome
                    slot.event.set()


@asynccontextmanager
async def open_session(
    cache_dir: Path, *, lease_ttl: float, keep_runs: int = 100
) -> AsyncGenerator[CacheSession, None]:
    """Open the cache for one run; on the way out, write what is pending, even if cancelled.

    Its leases bind for `lease_ttl` seconds unless renewed (`Settings.lease_ttl`); the
    history keeps the latest `keep_runs` runs (`Settings.keep_runs`).

    Every way out releases the run's leases; when even that cannot be written (a full
    disk), they no longer bind this process's later runs (see `index.end_owner`).

    Raises:
        CacheError: results could not be written (after the run's own outcome); its
            `lost` names their nodes.
    """
    idx = await Index.open(cache_dir)
    assert idx is not None, "asyncflow bug: Index.open(create=True) returned None"
    session = CacheSession(idx, lease_ttl, keep_runs)
    try:
        async with anyio.create_task_group() as tg:
            for service in session.services():
                tg.start_soon(service)
            try:
                yield session
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _SHUTDOWN_GRACE):
            try:
                await session.write_pending()
            finally:
                index.end_owner(session.owner)  # its leases bind no later run of this process
                try:
                    await session.release_all()
                finally:
                    await idx.close()
    if session.write_error is not None:
        raise _write_failure(cache_dir, session.lost, session.write_error) from session.write_error


def _write_failure(cache_dir: Path, lost: Sequence[str], error: Exception) -> CacheError:
    """Say which results a run could not write to the cache, why, and what to do."""
    why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    named = ", ".join(lost[:_NAMED])
    if len(lost) > _NAMED:
        named += f" and {len(lost) - _NAMED} more"
    return CacheError(
        f"could not write the results of {len(lost)} task(s) to the cache in {cache_dir} ({why}): "
        f"{named}; they will run again next time: free space there (or use another cache_dir), "
        "then run again",
        lost=lost,
    )


class CacheSession:
    """The cache as one run sees it; made by `open_session`."""

    def __init__(self, idx: Index, lease_ttl: float, keep_runs: int = 100) -> None:
        self.index = idx
        self.lease_ttl = lease_ttl
        self.keep_runs = keep_runs
        self.cache_dir: Path = idx.cache_dir
        self.owner = index.new_owner()
        self._pending: list[Entry] = []
        self._released: list[str] = []
        self._failures: list[tuple[str, str, str]] = []
        self._fingerprints: dict[str, tuple[str, str, str]] = {}  # digest -> its row, until written
        # The history: this run's row (written as it starts, its counts every `_COUNT_EVERY`
        # seconds while it goes on, again when it ends), its attempts and its graph.
        self.run: RunRow | None = None
        self._run_changed = False
        self._run_ended = False
        self._counts: Callable[[], dict[str, int]] | None = None
        self._counted = 0.0  # when the counts were last taken
        self._attempts: list[tuple[AttemptRow, Capture]] = []  # with what the attempt printed and logged
        self._graph: list[GraphPart] = []
        self._graph_size = 0  # nodes noted so far (up to `GRAPH_MAX`)
        self._wake = anyio.Event()
        self._room = anyio.Event()  # set (and made anew) whenever a write has taken results off the queue
        self.write_error: Exception | None = None  # the first reason a result could not be written
        self.lost: list[str] = []  # the keys of the results that could not be written
        self._seen: int | None = None  # the index's data_version when `lookup` read it
        self._acquire = Batcher[str, "tuple[str | None, Record | None]"](self._acquire_batch)
        self._poll = Batcher[str, bool](self._poll_batch)
        self._load = Batcher["tuple[str, str]", Any](self.load_many)

    def services(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Return the background loops the session needs while a run goes on."""
        return [self._acquire.serve, self._poll.serve, self._load.serve, self._writer, self._renewer]

    # Reads and leases, batched.

    async def lookup(self, keys: Sequence[str]) -> dict[str, Record]:
        """Return the records of those of `keys` that have one (one thread call)."""
        records, self._seen = await self._ask(index.snapshot, keys)
        return records

    async def digest_inputs(self, paths: Sequence[str]) -> Inputs:
        """Return the content digests of input files (see `files.py`), and why some have none."""
        from . import files  # here: a graph without input files (`File`) never needs it

        return await self._ask(files.digest_inputs, paths)

    async def made_where(self, digests: Iterable[str]) -> dict[str, str]:
        """Return the identity of the class behind each of these fingerprints that the index knows."""
        return await self._ask(index.made_where, digests)

    def note_fingerprints(self, fingerprints: Iterable[Fingerprint]) -> None:
        """Keep the fingerprints of this run's classes: each is written with the first result it made."""
        for f in fingerprints:
            self._fingerprints[f.digest] = (f.digest, f.identity, json.dumps(f.manifest))

    async def acquire(self, key: str) -> tuple[str | None, Record | None]:
        """Take the lease of `key` unless a live owner holds it; see `index.acquire`."""
        return await self._acquire.submit(key)

    async def acquire_many(self, keys: Sequence[str]) -> list[tuple[str | None, Record | None]]:
        """Like `acquire` for many keys at once (a transaction per few thousand).

        Right after `lookup`, a record comes back only if another process has written
        one meanwhile (else the lookup's stands and None comes back).
        """
        out: list[tuple[str | None, Record | None]] = []
        for i in range(0, len(keys), _BATCH_MAX):
            out.extend(await self._acquire_batch(keys[i : i + _BATCH_MAX], self._seen))
        self._seen = None  # later, this run's own writes may have changed records
        return out

    async def held(self, key: str) -> bool:
        """Tell whether a live owner holds the lease of `key`."""
        return await self._poll.submit(key)

    async def load(self, key: str, version: str) -> Any:
        """Return the cached result of `key` at `version`, or an `Unreadable` saying why not."""
        return await self._load.submit((key, version))

    async def load_many(self, wanted: Sequence[tuple[str, str]]) -> list[Any]:
        """Like `load` for many ``(key, version)`` pairs, in one thread call."""
        return await self._ask(read_results, self.cache_dir, wanted)

    async def forget(self, wanted: Sequence[tuple[str, str]]) -> None:
        """Remove the records of ``(key, version)`` pairs that cannot be read, unless replaced since."""
        files = await self._ask(index.forget, wanted)
        await anyio.to_thread.run_sync(blobs.remove, self.cache_dir, files)

    async def _acquire_batch(
        self, keys: Sequence[str], seen: int | None = None
    ) -> Sequence[tuple[str | None, Record | None]]:
        return await self._ask(index.acquire, self.owner, self.lease_ttl, keys, seen)

    async def _poll_batch(self, keys: list[str]) -> Sequence[bool]:
        return await self._ask(index.poll, keys)

    # Writes, behind the run.

    def store_nowait(self, entry: Entry) -> None:
        """Queue a computed result (its lease is released when it is written)."""
        self._pending.append(entry)
        self._wake.set()

    async def wait_room(self) -> None:
        """Wait while more results are queued for writing than `_BACKLOG_MAX`."""
        while len(self._pending) >= _BACKLOG_MAX:
            await self._room.wait()

    def begin_run(
        self, root: str, entrypoint: str, started: float, options: str, counts: Callable[[], dict[str, int]]
    ) -> None:
        """Note this run in the history, as running, with `counts` taken as it goes on (written at once)."""
        self.run = RunRow(
            self.owner, root, entrypoint, started, None, "running", "{}", index.HOST, os.getpid(), options
        )
        self._counts = counts
        self._run_changed = True
        self._wake.set()

    def note_graph(
        self,
        nodes: Sequence[Node],
        stale: Collection[Node],
        awaited: Sequence[tuple[Node, Sequence[Node]]] = (),
    ) -> None:
        """Queue part of this run's graph for its history (see `encode_graph`).

        `nodes` are new to the run (`stale` among them are to run); `awaited` pairs a body
        with tasks it awaited. Encoded on the writer's thread: nothing here may change them.
        """
        if self._graph_size > GRAPH_MAX:
            return
        self._graph_size += len(nodes)
        if self._graph_size > GRAPH_MAX:  # too big to keep: the history has none of it
            self._graph.clear()
            return
        self._graph.append((nodes, stale, awaited))
        self._wake.set()

    def end_run(self, ended: float, outcome: str, counts: str) -> None:
        """Note how this run ended (written by the last flush, which also trims the history)."""
        assert self.run is not None, "asyncflow bug: end_run without begin_run"
        self.run = self.run._replace(ended=ended, outcome=outcome, counts=counts)
        self._run_changed = self._run_ended = True

    def note_attempt(self, attempt: AttemptRow, output: Capture) -> None:
        """Queue an attempt of a body for the history, with what it printed and logged (kept in a file).

        `attempt` is an `Attempt` without its run (this one) and its log (found by the writer).
        """
        self._attempts.append((attempt, output))
        self._wake.set()  # a retried attempt too: the history shows it without waiting for a result

    def release_nowait(self, key: str, failure: tuple[str, str] | None = None) -> None:
        """Queue the release of a lease, noting ``(task_name, error)`` if the node failed."""
        self._released.append(key)
        if failure is not None:
            self._failures.append((key, *failure))
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            with anyio.move_on_after(_COUNT_EVERY):  # a running run's counts, also when nothing ends
                await self._wake.wait()
            if len(self._pending) < _BATCH_MAX:
                # Gather what finishes in the next moment into the same transaction: a
                # chain of quick tasks would otherwise commit every node on its own.
                await anyio.sleep(_COALESCE)
            self._wake = anyio.Event()
            await self.write_pending(drain=False)

    async def write_pending(self, *, drain: bool = True) -> None:
        """Write the queued results, lease releases and failure notes.

        A result that cannot be written (the disk is full) is noted in `lost` and
        `write_error`, and the rest are still tried: what fits is kept.

        Args:
            drain: also write what is queued while writing; else only what is queued now.
        """
        rounds = -1 if drain else max(1, -(-len(self._pending) // _BATCH_MAX))
        self._take_counts()
        while (
            self._pending
            or self._released
            or self._failures
            or self._run_changed
            or self._graph
            or self._attempts
        ) and rounds != 0:
            rounds -= 1
            entries, self._pending = self._pending[:_BATCH_MAX], self._pending[_BATCH_MAX:]
            released, self._released = self._released, []
            failures, self._failures = self._failures, []
            attempts, self._attempts = self._attempts, []
            graph, self._graph = self._graph, []
            run = self.run if self._run_changed else None
            keep = self.keep_runs if self._run_ended else None
            self._run_changed = False
            made_by = [
                self._fingerprints.pop(d) for d in {e.source for e in entries} if d in self._fingerprints
            ]
            unwritten: Sequence[tuple[str, Exception]] = ()  # (the shielded scope never swallows)
            # Shielded: what was taken off the queues must reach the index, or a
            # cancellation arriving before the worker thread starts would drop it.
            with anyio.CancelScope(shield=True):
                try:
                    unwritten = await self.index.call(
                        _write, self.cache_dir, self.owner, entries, released, failures, made_by,
                        (run, attempts, keep, graph),
                    )  # fmt: skip
                except (OSError, sqlite3.Error) as exc:  # the commit failed: none of them is kept
                    unwritten = [(e.key, exc) for e in entries]
                    self._fingerprints.update((f[0], f) for f in made_by)  # for a later result
            for key, exc in unwritten:
                self.lost.append(key)
                self.write_error = self.write_error or exc
            self._room.set()
            self._room = anyio.Event()

    def _take_counts(self) -> None:
        """Note the counts of a running run, at most every `_COUNT_EVERY` seconds, if they changed."""
        if self.run is None or self._run_ended or self._counts is None:
            return
        now = time.monotonic()
        if now - self._counted < _COUNT_EVERY:
            return
        self._counted = now
        counts = json.dumps(self._counts())
        if counts != self.run.counts:
            self.run = self.run._replace(counts=counts)
            self._run_changed = True

    async def release_all(self) -> None:
        """Drop every lease this run holds (say so when even that cannot be written)."""
        try:
            await self.index.call(index.release_all, self.owner)
        except (OSError, sqlite3.Error) as exc:
            # They bind no later run of this process (see `index.end_owner`); other
            # processes wait until they expire.
            log.warning(
                "could not release this run's leases in %s (%s); other processes may wait "
                "up to %g s for the tasks they name",
                self.cache_dir,
                exc,
                self.lease_ttl,
            )

    async def _ask(self, fn: Callable[..., T], *args: Any) -> T:
        """`Index.call` for what the run cannot go on without: an SQLite failure is a `CacheError`."""
        try:
            return await self.index.call(fn, *args)
        except sqlite3.Error as exc:  # e.g. "database or disk is full"
            raise CacheError(
                f"the cache index {paths.index_path(self.cache_dir)} could not be used ({exc}); "
                "if the disk is full, free space there (or use another cache_dir) and run again"
            ) from exc

    async def _renewer(self) -> None:
        while True:
            await anyio.sleep(self.lease_ttl / 3)
            with contextlib.suppress(sqlite3.OperationalError):  # busy: try again next time
                await self.index.call(index.renew, self.owner, self.lease_ttl)


# On the index's worker thread.


class Unreadable(NamedTuple):
    """In place of a result that cannot be read back: why, and whether its entry is damaged."""

    reason: str
    damaged: bool  # False: the record was removed or replaced meanwhile, nothing is wrong with it


def read_results(conn: sqlite3.Connection, cache_dir: Path, wanted: Sequence[tuple[str, str]]) -> list[Any]:
    """Return the results of ``(key, version)`` pairs, or an `Unreadable` in place of each that cannot be read."""
    out: list[Any] = []
    for (key, _), stored in zip(wanted, index.load(conn, wanted), strict=True):
        if stored is None:
            out.append(Unreadable("it was removed or replaced while this run used it", damaged=False))
            continue
        try:
            out.append(blobs.read(cache_dir, key, stored))
        except UnreadableResultError as exc:
            out.append(Unreadable(exc.reason, damaged=True))
    return out


def _write(
    conn: sqlite3.Connection,
    cache_dir: Path,
    owner: str,
    entries: Sequence[Entry],
    released: Sequence[str],
    failures: Sequence[tuple[str, str, str]],
    fingerprints: Sequence[tuple[str, str, str]],
    history: tuple[RunRow | None, Sequence[tuple[AttemptRow, Capture]], int | None, Sequence[GraphPart]] = (
        None,
        (),
        None,
        (),
    ),
) -> list[tuple[str, OSError]]:
    """Encode results and write the large ones to files, then commit all to the index.

    `history` is the run's row (if it changed), attempts with their output (written to
    log files first; an attempt whose log cannot be written is kept without it), how
    many runs to keep (as the run ends) and parts of the run's graph, for `index.commit`.

    A result file is in place before the record that names it, and the file of a
    replaced result goes only once its record is gone: a crash between leaves an
    orphan file at worst, never a record without its file.

    Returns:
        The keys of the results whose file could not be written (e.g. the disk is
        full), each with why; they are left out, the others are committed.

    Raises:
        sqlite3.Error, OSError: the commit failed (nothing was committed, and the files
            written for it are removed again).
    """
    encoded: list[Encoded] = []
    unwritten: list[tuple[str, OSError]] = []
    for e in entries:
        codec, data = blobs.compress(e.pickled, e.compress_level)
        try:
            path = blobs.store(cache_dir, e.version, data)
        except OSError as exc:  # a smaller result may still fit
            unwritten.append((e.key, exc))
            continue
        digest = blobs.digest(data)
        encoded.append(Encoded(e, codec, None if path else data, path, len(data), digest))
    run, attempts, keep, graph = history
    try:
        kept = [_log(cache_dir, owner, a, output.text()) for a, output in attempts]
        parts = [encode_graph(graph)] if graph else []
        while True:
            try:
                replaced, forgotten = index.commit(
                    conn, owner, encoded, released, failures, fingerprints, run, kept, keep, parts
                )
                break
            except sqlite3.OperationalError as exc:
                if not encoded or not _disk_full(exc):
                    raise
                # The index's log needs room too: give up the later half of the results
                # (their files make room) and commit the rest, so what fits is kept.
                encoded, dropped = encoded[: len(encoded) // 2], encoded[len(encoded) // 2 :]
                blobs.remove(cache_dir, [s.path for s in dropped if s.path is not None])
                unwritten += [(s.entry.key, OSError(errno.ENOSPC, str(exc))) for s in dropped]
    except BaseException:
        blobs.remove(cache_dir, [s.path for s in encoded if s.path is not None])  # no record names them
        raise
    blobs.remove(cache_dir, replaced)
    if forgotten:
        import shutil  # here: it imports the bz2 and lzma modules, milliseconds of every first run

        for old in forgotten:
            shutil.rmtree(paths.logs_dir(cache_dir, old), ignore_errors=True)
    return unwritten


def _disk_full(exc: sqlite3.OperationalError) -> bool:
    """Tell whether SQLite failed for want of disk space (SQLITE_FULL)."""
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)


def _log(cache_dir: Path, run: str, attempt: AttemptRow, output: str) -> AttemptRow:
    """Write what an attempt of `run` printed and logged to its file, and name it in the attempt."""
    if not output:
        return attempt
    key, number = attempt[0], attempt[1]
    directory = paths.logs_dir(cache_dir, run)
    name = paths.log_name(key, number)
    try:
        paths.make_dirs(directory, paths.PRIVATE_DIR)
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, paths.PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
            out.write(output)
    except OSError as exc:  # a full disk: the history keeps the attempt, without its output
        log.warning("could not keep the output of %s (attempt %d): %s", key, number, exc)
        return attempt
    return (*attempt[:-1], name)
