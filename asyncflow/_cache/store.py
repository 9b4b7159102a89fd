"""The cache outside a run: read one result, clear nodes or a whole class, what the index knows.

Each call opens the index, does its work (a thread call or two), and closes it; a cache
directory without an index holds nothing (nothing is created to find that out).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from .._errors import CacheError, UnreadableResultError
from . import blobs, files, index, paths
from .history import settled
from .index import Attempt as Attempt
from .index import ClassSummary as ClassSummary
from .index import Index, Record
from .index import RunRow as RunRow
from .session import Unreadable, read_results

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncGenerator, Sequence
    from pathlib import Path

    from .check import Report
    from .files import Inputs


@asynccontextmanager
async def open_index(cache_dir: Path) -> AsyncGenerator[Index | None, None]:
    """Open the index of `cache_dir` for one operation; None when there is none."""
    idx = await Index.open(cache_dir, create=False)
    try:
        yield idx
    finally:
        if idx is not None:
            await idx.close()


async def load_result(cache_dir: Path, key: str, label: str) -> Any:
    """Return the cached result of node `key` (`label`: the task, for the message).

    Raises:
        UnreadableResultError: its result cannot be read back (damaged, or its class renamed).
        CacheError: the cache holds no result for it.
    """
    async with open_index(cache_dir) as idx:
        if idx is not None:
            record = (await idx.call(index.lookup, [key])).get(key)
            if record is not None:
                (value,) = await idx.call(read_results, cache_dir, [(key, record.version)])
                if not isinstance(value, Unreadable):
                    return value
                if value.damaged:
                    raise UnreadableResultError(
                        f"the cached result of {label} cannot be read: {value.reason}; "
                        "`await task.run()` computes it again",
                        task=label,
                        reason=value.reason,
                    )
    raise CacheError(f"{label} has no cached result in {cache_dir}; run it first: await task.run()")


async def clear_nodes(cache_dir: Path, keys: Sequence[str]) -> list[str]:
    """Remove the results and task directories of nodes `keys`; return the keys that had a result."""
    async with open_index(cache_dir) as idx:
        if idx is None:
            return []
        removed, files = await idx.call(index.delete, keys)
    await anyio.to_thread.run_sync(
        _remove, cache_dir, files, [paths.task_directory(cache_dir, k) for k in keys]
    )
    return removed


async def clear_class(cache_dir: Path, task_name: str) -> int:
    """Remove every result and task directory of one class; return how many results."""
    async with open_index(cache_dir) as idx:
        if idx is None:
            return 0
        removed, files = await idx.call(index.delete_class, task_name)
    await anyio.to_thread.run_sync(_remove, cache_dir, files, [paths.class_data_dir(cache_dir, task_name)])
    return removed


class Known(NamedTuple):
    """What the index knows of some nodes, by key: their records, run times and last failures."""

    records: dict[str, Record]
    times: dict[str, tuple[float, float]]  # (started, finished) of each record's run
    failures: dict[str, str]  # the error of the last run, when it failed
    made_where: dict[str, str]  # fingerprint (Record.source) -> identity of its class
    manifests: dict[str, dict[str, str]]  # fingerprint -> what its code was made of

    def add(self, more: Known) -> None:
        """Add what `more` knows (of more nodes)."""
        self.records.update(more.records)
        self.times.update(more.times)
        self.failures.update(more.failures)
        self.made_where.update(more.made_where)
        self.manifests.update(more.manifests)


async def known(cache_dir: Path, keys: Sequence[str]) -> Known:
    """Return what the index of `cache_dir` knows of `keys` (nothing, when it has no index)."""
    async with open_index(cache_dir) as idx:
        if idx is None:
            return Known({}, {}, {}, {}, {})
        return await idx.call(_known, keys)


def _known(conn: sqlite3.Connection, keys: Sequence[str]) -> Known:
    records = index.lookup(conn, keys)
    times, failures = index.times_and_failures(conn, keys)
    sources = {r.source for r in records.values()}
    return Known(records, times, failures, index.made_where(conn, sources), index.manifests(conn, sources))


async def digest_inputs(cache_dir: Path, paths: Sequence[str]) -> Inputs:
    """Return the content digests of input files (see `files.py`), kept in the index if it exists."""
    async with open_index(cache_dir) as idx:
        if idx is None:
            return await anyio.to_thread.run_sync(files.digest_inputs, None, paths)
        return await idx.call(files.digest_inputs, paths)


async def check(cache_dir: Path, *, repair: bool = False) -> Report | None:
    """Check the cache of `cache_dir` for damage (with `repair`, remove it); None when it has no index."""
    from . import check as _check  # here: only `asyncflow check` needs it, not a task's result

    return await anyio.to_thread.run_sync(_check.check, cache_dir, repair)


async def history(cache_dir: Path, limit: int) -> list[RunRow] | None:
    """Return the latest `limit` runs of the history, the latest first; None when `cache_dir` has no index."""
    async with open_index(cache_dir) as idx:
        return None if idx is None else [settled(r) for r in await idx.call(index.runs, limit)]


async def attempts(cache_dir: Path, run: str) -> list[Attempt]:
    """Return every attempt of every body of the run `run`, in the order they started."""
    async with open_index(cache_dir) as idx:
        return [] if idx is None else await idx.call(index.attempts_of, run)


async def attempts_of_node(cache_dir: Path, key: str, limit: int) -> list[Attempt]:
    """Return the latest `limit` attempts of the node `key`, over the runs kept, the latest first."""
    async with open_index(cache_dir) as idx:
        return [] if idx is None else await idx.call(index.attempts_of_node, key, limit)


async def new_attempts_of_node(
    cache_dir: Path, key: str, seen: frozenset[tuple[str, int]]
) -> tuple[list[Attempt], list[tuple[str, int]]]:
    """Return the attempts of the node `key` written since the batches `seen`, and the batches read.

    See `index.new_attempts_of_node`; nothing when `cache_dir` has no index (yet).
    """
    async with open_index(cache_dir) as idx:
        return ([], []) if idx is None else await idx.call(index.new_attempts_of_node, key, seen)


def read_log(cache_dir: Path, attempt: Attempt) -> str:
    """Return what `attempt` printed and logged ("" if nothing, or if its file is gone)."""
    if attempt.log is None:
        return ""
    try:
        return (paths.logs_dir(cache_dir, attempt.run) / attempt.log).read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return ""


async def summarize(cache_dir: Path) -> list[ClassSummary] | None:
    """Return what the cache holds per task class; None when `cache_dir` has no index."""
    async with open_index(cache_dir) as idx:
        return None if idx is None else await idx.call(index.summarize)


def _remove(cache_dir: Path, files: Sequence[str], dirs: Sequence[Path]) -> None:
    import shutil  # here: it imports the bz2 and lzma modules, milliseconds of reading a result

    blobs.remove(cache_dir, files)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
