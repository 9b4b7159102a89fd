"""The SQLite index (WAL) of one cache directory: records, leases, failures.

aiosqlite drives its connection with asyncio futures, which do not run under trio, so
the index keeps aiosqlite's model (one connection, every call made off the event loop
on a worker thread, calls serialised) with anyio's `to_thread`, which runs on both.
Callers batch: one call reads or writes many nodes in one transaction.

Private to `_cache/`: the rest of asyncflow goes through `session.py` (a run) and
`store.py` (everything else). SQL only: encoding results and their files are `blobs.py`'s;
the history's batches (attempts, and a run's graph by `encode_graph`) are encoded here as
a run writes them, and `history.py`, which a run never imports, joins a graph again.
Only the process that awaits ``run()`` opens the index; workers never do.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import socket
import sqlite3
import time
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio

from .._errors import CacheError
from .._keys import split_key
from . import paths

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Generator, Iterable, Sequence
    from pathlib import Path

    from .._graph import Node

T = TypeVar("T")

# 2: no secondary indexes (each cost a B-tree write per node). 3: fingerprints of the code
# that made results (the bytecode a class reaches; 2's AST hashes never match them, so a
# cache from asyncflow 0.1 re-runs once) and the digests of input files. 4: a digest of
# every stored result (`blobs.digest`); older records have none and are read unchecked.
# 5: the tasks a body awaited (`_recipes`), which take part in its staleness. 6: the
# history of runs and of every attempt of every body. 7: the graph of each run. 8: one
# expiry per lease owner (`owners`), not per lease: a run renews one row, not a row per
# node it has yet to compute (up to a million, every few seconds).
SCHEMA_VERSION = 8
_SCHEMA_PLAUSIBLE = 1000  # a schema number above this is damage, not a newer asyncflow
_CHUNK = 500  # keys per `IN (...)` query, below SQLite's variable limit everywhere

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    key TEXT PRIMARY KEY,          -- task_name(canonical arguments)
    task_name TEXT NOT NULL,
    args TEXT NOT NULL,
    source TEXT NOT NULL,          -- fingerprint of the code that made it (see fingerprints)
    version TEXT NOT NULL,         -- unique per write: dependents record it
    deps TEXT NOT NULL,            -- hash of the upstream versions and Const values used
    codec INTEGER NOT NULL,
    data BLOB,                     -- the encoded result, when small
    path TEXT,                     -- else its file under results/
    size INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    digest BLOB,                   -- blobs.digest of the stored result (NULL: made before schema 4)
    awaited BLOB                   -- _recipes.encode of the tasks its body awaited (NULL: none)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL            -- host:pid:run: binds while its owner's row is live
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,        -- host:pid:run, with a lease or about to take one
    expires REAL NOT NULL          -- its leases bind no one after this, unless renewed
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    task_name TEXT NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fingerprints (
    digest TEXT PRIMARY KEY,       -- as nodes.source holds it
    identity TEXT NOT NULL,        -- digest of the file defining the class
    manifest TEXT NOT NULL         -- JSON {part: digest}: what "code changed: ..." names
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,         -- absolute path of an input file (asyncflow.File)
    size INTEGER NOT NULL,         -- the stat it was hashed at: hashed again when it changes
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    digest TEXT NOT NULL,          -- of its content
    hashed_ns INTEGER NOT NULL,    -- when: a file changed within a second of that is hashed again
    changed REAL NOT NULL          -- when the digest last changed (what "input changed" names)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,           -- the run's lease owner, host:pid:token
    root TEXT NOT NULL,            -- the key of the task it ran
    entrypoint TEXT NOT NULL,      -- the same as the task is written, Choose(6, 3)
    started REAL NOT NULL,
    ended REAL,                    -- NULL while it runs, or if its process died
    outcome TEXT NOT NULL,         -- running, ok, failed, cancelled, error
    counts TEXT NOT NULL,          -- JSON {run, reused, failed, retried, skipped}
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    options TEXT NOT NULL          -- JSON: the options that decide what runs where
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    run TEXT NOT NULL,             -- runs.id
    batch INTEGER NOT NULL,        -- one row per write of the run: a row per attempt costs 5 us each
    data BLOB NOT NULL,            -- zlib of marshal: [(key, attempt, started, ended, place, outcome, error, log)]
    PRIMARY KEY (run, batch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS graphs (
    run TEXT NOT NULL,             -- runs.id
    batch INTEGER NOT NULL,        -- the planned graph, then what bodies awaited as they ran
    data BLOB NOT NULL,            -- zlib of marshal, see `GraphPart`
    PRIMARY KEY (run, batch)
) WITHOUT ROWID;
-- A class's nodes are a range of keys ("name(" up to "name)"), and leases are found by key (a
-- run's are released by key as its results are written, the rest once as it ends).
DROP INDEX IF EXISTS nodes_by_class;
DROP INDEX IF EXISTS leases_by_owner;
"""

HOST = socket.gethostname()
log = logging.getLogger("asyncflow")

# The lease owners of this process's runs that have not ended. A lease of this process
# whose run has ended binds no one, even if its row could not be deleted (a full disk):
# without this, the next run of a long-lived process would wait out its own dead leases.
_LIVE_OWNERS: set[str] = set()


class Record(NamedTuple):
    """What decides whether a cached result is fresh."""

    source: str
    version: str
    deps: str
    awaited: bytes | None = None  # the tasks its body awaited (`_recipes.encode`), if any


class Entry(NamedTuple):
    """A computed result on its way into the index (its class and arguments are in its key)."""

    key: str
    source: str
    version: str
    deps: str
    pickled: bytes
    compress_level: int
    started: float
    finished: float
    awaited: bytes | None = None  # the tasks its body awaited (`_recipes.encode`), if any


class RunRow(NamedTuple):
    """A run, as the history keeps it (see the ``runs`` table)."""

    id: str
    root: str
    entrypoint: str
    started: float
    ended: float | None
    outcome: str
    counts: str
    host: str
    pid: int
    options: str


class Attempt(NamedTuple):
    """One attempt of one body in one run (see the ``attempts`` table)."""

    run: str
    key: str
    attempt: int
    started: float
    ended: float
    place: str
    outcome: str
    error: str | None
    log: str | None = None  # the file name of its output (`paths.log_name`), if it had any


# An `Attempt` as a run writes it: without its run (the writer's), as a plain tuple (cheaper).
AttemptRow = tuple[str, int, float, float, str, str, "str | None", "str | None"]

# The largest graph a run keeps in its history: beyond it, a run's graph is not kept
# (its counts still are). 100,000 nodes encode to a few MB in ~50 ms, off the loop.
GRAPH_MAX = 100_000


# Part of a run's graph: nodes new to the run, those of them that are stale (to run), and
# bodies with tasks they awaited.
GraphPart = tuple["Sequence[Node]", "Collection[Node]", "Sequence[tuple[Node, Sequence[Node]]]"]


def encode_graph(parts: Sequence[GraphPart]) -> bytes:
    """Encode parts of a run's graph as one: each node with its upstream, whether it was to run, and awaited edges.

    Keys are written once each: marshal refers back to a string it has written (the
    key of a dep is its node's own key object).
    """
    rows: list[tuple[str, bool, tuple[str, ...]]] = []
    edges: list[tuple[str, tuple[str, ...]]] = []
    for nodes, stale, awaited in parts:
        stale_set = stale if isinstance(stale, (set, frozenset)) else set(stale)
        rows += [(n.key, n in stale_set, tuple(d.key for d in n.deps)) for n in nodes]
        edges += [(parent.key, tuple(c.key for c in children)) for parent, children in awaited]
    return zlib.compress(marshal.dumps((rows, edges)), 1)


def decode_graph_part(data: bytes) -> tuple[Any, Any] | None:
    """Return the ``(rows, edges)`` that `encode_graph` made of a part; None if it is damaged.

    Any: lists of tuples as `encode_graph` wrote them (`history.decode_graph` reads them).
    """
    try:
        rows, edges = marshal.loads(zlib.decompress(data))
    except Exception:  # damaged, or from another Python's marshal: the history lacks this part
        return None
    return rows, edges


class Encoded(NamedTuple):
    """An entry encoded for the index: its result inline (`data`) or in the file `path`."""

    entry: Entry
    codec: int
    data: bytes | None
    path: str | None
    size: int  # bytes of the encoded result
    digest: bytes  # of the encoded result, see `blobs.digest`


class Stored(NamedTuple):
    """A stored result as the index holds it: inline `data`, or the name of its file."""

    codec: int
    data: bytes | None
    path: str | None
    digest: bytes | None  # None: stored before digests were kept
    # False when the key does not read as its task_name and args columns: a damaged key,
    # which may now name another node (the digest covers the result, not whose it is).
    whole: bool = True


def key_matches(key: object, task_name: object, args: object) -> bool:
    """Tell whether a record's key is the one its task_name and args columns make."""
    return (
        isinstance(key, str)
        and isinstance(task_name, str)
        and isinstance(args, str)
        and (key == f"{task_name}({args})")
    )


def new_owner() -> str:
    """Return the lease owner (``host:pid:run``) of a new run of this process, live until `end_owner`."""
    owner = f"{HOST}:{os.getpid()}:{os.urandom(4).hex()}"
    _LIVE_OWNERS.add(owner)
    return owner


def end_owner(owner: str) -> None:
    """Mark the run that `owner` stands for as ended: its leases bind no one from now on."""
    _LIVE_OWNERS.discard(owner)


def owner_alive(owner: object, expires: object, now: float) -> bool:
    """Tell whether a lease (a row: any types, it may be damaged) still binds: not expired, its run not known to have ended."""
    if not isinstance(owner, str) or not isinstance(expires, (int, float)):
        return False  # a damaged row binds no one
    if expires <= now:
        return False
    host, _, rest = owner.partition(":")
    if host != HOST:
        return True
    pid_text = rest.partition(":")[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner in _LIVE_OWNERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


# Distinct texts `lookup` keeps once each: signatures of nodes with deps are mostly
# distinct, so past this many it stops looking them up.
_SHARED_MAX = 1024


# Records made as the tuples they are: the generated `Record.__new__` costs ~0.3 us a row.
_record: Callable[[type[Record], tuple[str, str, str, bytes | None]], Record] = tuple.__new__  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]  # typeshed: generic in the subclass


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class Index:
    """One connection to a cache's index; every method runs on a worker thread."""

    def __init__(self, cache_dir: Path, conn: sqlite3.Connection) -> None:
        self.cache_dir = cache_dir
        self._conn = conn
        self._lock = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, cache_dir: Path, *, create: bool = True) -> Index | None:
        """Open (and if needed create) the index of `cache_dir`; None if absent and not `create`.

        Raises:
            CacheError: the file is not an asyncflow index, or a newer asyncflow wrote it.
        """
        conn = await anyio.to_thread.run_sync(connect, cache_dir, create)
        return None if conn is None else cls(cache_dir, conn)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a worker thread, one call at a time.

        Raises:
            CacheError: SQLite found the index damaged (other SQLite errors pass as they are).
        """
        try:
            return await anyio.to_thread.run_sync(fn, self._conn, *args, limiter=self._lock)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):  # "database is locked", a full disk, ...
                raise
            raise damaged(self.cache_dir, exc) from exc

    async def close(self) -> None:
        """Close the connection (after any call in progress)."""
        await anyio.to_thread.run_sync(self._conn.close, limiter=self._lock)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Generator[None, None, None]:
    """Hold SQLite's write lock for the block; commit it, or roll back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect(cache_dir: Path, create: bool = False) -> sqlite3.Connection | None:
    """Open the index of `cache_dir` (bringing an older one up to date); None if absent and not `create`.

    Raises:
        CacheError: the file is not an asyncflow index, is damaged, or a newer asyncflow wrote it.
    """
    path = paths.index_path(cache_dir)
    if not create and not path.exists():
        return None
    paths.make_dirs(path.parent)
    try:
        return create_at(path)
    except sqlite3.DatabaseError as exc:
        raise damaged(cache_dir, exc) from exc


def create_at(path: Path) -> sqlite3.Connection:
    """Open the index file at `path`, creating it or bringing it up to date as needed.

    Raises:
        CacheError: a newer asyncflow wrote it.
        sqlite3.DatabaseError: SQLite cannot use the file.
    """
    if not path.exists():
        # With our mode, whatever the umask (SQLite gives the -wal and -shm files the same);
        # an empty file is an empty database to SQLite.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, paths.FILE))
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    try:
        # Switching a new, empty index to WAL syncs it to disk (~25 ms) unless told not
        # to; an OS crash at that moment costs nothing but an empty index.
        conn.execute("PRAGMA synchronous=OFF")
        _set_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_PLAUSIBLE:  # no asyncflow will ever get there: a flipped bit
            raise sqlite3.DatabaseError(f"schema number {version} in its header")
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"the cache at {path} was written by a newer asyncflow (schema {version}, "
                f"this one reads {SCHEMA_VERSION}); upgrade asyncflow or use another cache_dir"
            )
        if version < SCHEMA_VERSION:
            with _transaction(conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(nodes)")}
                if "digest" not in columns:  # an index of schema 2 or 3
                    conn.execute("ALTER TABLE nodes ADD COLUMN digest BLOB")
                if "awaited" not in columns:  # an index of schema 2 to 4
                    conn.execute("ALTER TABLE nodes ADD COLUMN awaited BLOB")
                if "expires" in {row[1] for row in conn.execute("PRAGMA table_info(leases)")}:
                    _move_expiries(conn)  # an index of schema 7 or older
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _move_expiries(conn: sqlite3.Connection) -> None:
    """Give each owner of a lease of a schema-7 index one expiry (its leases' latest), and its leases none.

    Carried over, not dropped: a run of an older asyncflow still computing those nodes
    keeps them from being computed twice until its leases would have expired.
    """
    conn.execute(
        "INSERT OR REPLACE INTO owners SELECT owner, max(expires) FROM leases"
        " WHERE typeof(owner) = 'text' AND typeof(expires) IN ('real', 'integer') GROUP BY owner"
    )
    conn.execute("CREATE TABLE leases_8 (key TEXT PRIMARY KEY, owner TEXT NOT NULL) WITHOUT ROWID")
    conn.execute("INSERT INTO leases_8 SELECT key, owner FROM leases")
    conn.execute("DROP TABLE leases")
    conn.execute("ALTER TABLE leases_8 RENAME TO leases")


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Tell whether SQLite raised `exc` because the index file is damaged."""
    # A malformed page is a plain DatabaseError; a flipped bit in a text column, an
    # OperationalError when the row is read.
    return type(exc) is sqlite3.DatabaseError or "Could not decode" in str(exc)


def damaged(cache_dir: Path, exc: sqlite3.DatabaseError) -> CacheError:
    """Word an error SQLite raised on the index of `cache_dir` as a `CacheError` saying what to do."""
    path = paths.index_path(cache_dir)
    text = str(exc)
    if is_damage(exc) or "not a database" in text:
        return CacheError(
            f"the cache index {path} is damaged ({text}); run `asyncflow check --repair "
            f"--cache-dir {cache_dir}` to keep what can be read (the rest runs again), "
            f"or remove {paths.root(cache_dir)} to start an empty cache"
        )
    return CacheError(
        f"the cache index {path} cannot be used ({text}); if its disk is full or read-only, "
        "free space there or pick another cache_dir"
    )


def _set_wal(conn: sqlite3.Connection) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is
    # locked" at once (no busy wait) while another process opens the same new cache.
    deadline = time.monotonic() + 60
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# Everything below runs on the index's worker thread.


def data_version(conn: sqlite3.Connection) -> int:
    """A number that changes whenever another connection commits to the database."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def snapshot(conn: sqlite3.Connection, keys: Sequence[str]) -> tuple[dict[str, Record], int]:
    """`lookup`, with the `data_version` it is current at (read first, so never newer)."""
    version = data_version(conn)
    return lookup(conn, keys), version


def lookup(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Record]:
    """Return the records of those of `keys` that have one."""
    out: dict[str, Record] = {}
    # A run keeps the records of all its nodes: each is keyed by the caller's key object,
    # and the texts most records repeat (a class's fingerprint, the signature of nodes
    # that read nothing) are kept once, not once per row (~200 bytes per node).
    shared: dict[str, str] = {}
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT key, source, version, deps, awaited FROM nodes WHERE key IN ({marks})", chunk
        )
        mine = {key: key for key in chunk}
        for read, source, version, deps, awaited in rows:
            if (
                type(source) is str
                and type(version) is str
                and type(deps) is str
                and (awaited is None or type(awaited) is bytes)
            ):  # else damaged: stale
                source = shared.setdefault(source, source)
                deps = shared.setdefault(deps, deps) if len(shared) < _SHARED_MAX else deps
                # A damaged row can answer for a key with another (its index entry intact):
                # kept under the key it reads, no node finds it, so the node is stale.
                key: str = mine.get(read) or read  # keys are never empty
                out[key] = _record(Record, (source, version, deps, awaited))
    return out


def made_where(conn: sqlite3.Connection, digests: Iterable[str]) -> dict[str, str]:
    """Return the identity (defining file) of the class behind each known fingerprint."""
    wanted = list(digests)
    out: dict[str, str] = {}
    for chunk in _chunks(wanted):
        marks = ",".join("?" * len(chunk))
        out.update(
            conn.execute(f"SELECT digest, identity FROM fingerprints WHERE digest IN ({marks})", chunk)
        )
    return out


def manifests(conn: sqlite3.Connection, digests: Iterable[str]) -> dict[str, dict[str, str]]:
    """Return the manifest (what the code was made of) of each known fingerprint."""
    wanted = list(digests)
    out: dict[str, dict[str, str]] = {}
    for chunk in _chunks(wanted):
        marks = ",".join("?" * len(chunk))
        for digest, text in conn.execute(
            f"SELECT digest, manifest FROM fingerprints WHERE digest IN ({marks})", chunk
        ):
            try:
                out[digest] = json.loads(text)
            except (TypeError, ValueError):  # damaged: the reason is then "code changed", unnamed
                continue
    return out


def file_rows(conn: sqlite3.Connection, paths: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Return the ``files`` rows (size, mtime_ns, inode, digest, hashed_ns, changed) of `paths` and of the paths under them."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in paths:
        # The path itself, and the range of paths under it (the character after "/" is "0").
        rows = conn.execute(
            "SELECT path, size, mtime_ns, inode, digest, hashed_ns, changed FROM files"
            " WHERE path = ? OR (path > ? AND path < ?)",
            (path, path + os.sep, path + chr(ord(os.sep) + 1)),
        )
        for found, *row in rows:
            out[found] = tuple(row)
    return out


def note_files(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Keep ``(path, size, mtime_ns, inode, digest, hashed_ns, changed)`` of hashed input files."""
    with _transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", rows)


def times_and_failures(
    conn: sqlite3.Connection, keys: Sequence[str]
) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """Return ``(started, finished)`` of the records of `keys`, and their last failures."""
    times: dict[str, tuple[float, float]] = {}
    failures: dict[str, str] = {}
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        for key, started, finished in conn.execute(
            f"SELECT key, started, finished FROM nodes WHERE key IN ({marks})", chunk
        ):
            if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
                times[key] = (started, finished)
        failures.update(conn.execute(f"SELECT key, error FROM failures WHERE key IN ({marks})", chunk))
    return times, failures


class ClassSummary(NamedTuple):
    """What the index holds for one task class (`asyncflow status`)."""

    task_name: str
    nodes: int
    size: int  # bytes of the stored (encoded) results
    last_run: float | None  # when the newest result finished (epoch seconds)
    last_failure: tuple[str, str, float] | None  # (key, error, at) of the newest failure


def summarize(conn: sqlite3.Connection) -> list[ClassSummary]:
    """Return per task class: results held, their bytes, the last run and the last failure."""
    counts: dict[str, tuple[int, int, float | None]] = {}
    for name, nodes, size, finished in conn.execute(
        "SELECT task_name, count(*), coalesce(sum(size), 0), max(finished) FROM nodes GROUP BY task_name"
    ):
        counts[name] = (nodes, size, finished)
    failures: dict[str, tuple[str, str, float]] = {}
    # SQLite takes the bare columns of an aggregate query from the row holding max(at).
    for name, key, error, at in conn.execute(
        "SELECT task_name, key, error, max(at) FROM failures GROUP BY task_name"
    ):
        failures[name] = (key, error, at)
    return [
        ClassSummary(name, *counts.get(name, (0, 0, None)), failures.get(name))
        for name in sorted(counts.keys() | failures.keys())
    ]


def acquire(
    conn: sqlite3.Connection, owner: str, ttl: float, keys: Sequence[str], seen: int | None = None
) -> list[tuple[str | None, Record | None]]:
    """Take the lease of each key unless another live owner holds it (and renew `owner`'s).

    Returns, per key, ``(holder, record)``: `holder` is None when the lease is now ours,
    else the owner holding it; `record` is the node's record as of now, or None if it has
    none. With `seen`, a `data_version` the caller's records are current at: if no other
    connection has committed since, the records are not read again (every one is None).
    """
    now = time.time()
    holders: dict[str, str] = {}
    with _transaction(conn):
        conn.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (owner, now + ttl))
        # Most keys have no lease yet (all of them, in a cold run): when each one could be
        # inserted, they are ours and there is no holder to look up (a quarter of the cost).
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO leases (key, owner) VALUES (?, ?)", [(key, owner) for key in keys]
        )
        if conn.total_changes - before < len(keys):  # some were leased: by whom, and are they alive?
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"{_HOLDERS} WHERE leases.key IN ({marks})", chunk)
                holders.update(
                    (key, holder)
                    for key, holder, expires in rows.fetchall()
                    if holder != owner and owner_alive(holder, expires, now)
                )
            conn.executemany(
                "INSERT OR REPLACE INTO leases (key, owner) VALUES (?, ?)",
                [(key, owner) for key in keys if key not in holders],
            )
        records = {} if seen is not None and data_version(conn) == seen else lookup(conn, keys)
    return [(holders.get(key), records.get(key)) for key in keys]


def poll(conn: sqlite3.Connection, keys: Sequence[str]) -> list[bool]:
    """Tell, per key, whether a live owner still holds its lease."""
    now = time.time()
    out: list[bool] = []
    for key in keys:
        row = conn.execute(f"{_HOLDERS} WHERE leases.key=?", (key,)).fetchone()
        out.append(row is not None and owner_alive(row[1], row[2], now))
    return out


# Each lease with its owner's expiry: NULL when the owner has no row, so it binds no one.
_HOLDERS = "SELECT leases.key, leases.owner, owners.expires FROM leases LEFT JOIN owners USING (owner)"


def renew(conn: sqlite3.Connection, owner: str, ttl: float) -> None:
    """Push back the expiry of every lease `owner` holds (one row: they share it)."""
    # Inserted if missing too: if another process removed it as expired while this one was
    # paused, the leases no one took over meanwhile are still this run's to compute.
    conn.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (owner, time.time() + ttl))


def commit(
    conn: sqlite3.Connection,
    owner: str,
    encoded: Sequence[Encoded],
    released: Sequence[str],
    failures: Sequence[tuple[str, str, str]],
    fingerprints: Sequence[tuple[str, str, str]] = (),
    run: RunRow | None = None,
    attempts: Sequence[AttemptRow] = (),
    keep_runs: int | None = None,
    graph: Sequence[bytes] = (),
) -> tuple[list[str], list[str]]:
    """Record results, drop their leases and note failures, in one transaction.

    Also the history: the `run`'s row as it stands, its `attempts`, parts of its `graph`
    (`encode_graph`), and with `keep_runs` (as the run ends) the removal of all but the
    latest `keep_runs` runs with their attempts and graphs.

    Returns:
        The result files to remove after (of the results these replace, and of those
        dropped), and the ids of the runs the history forgot (their logs go too).

    Fenced: a result is recorded only while `owner` still holds its node's lease. A
    holder that lost it (paused past its expiry, while another process computed the
    node) must not overwrite the newer record: its result is dropped, and logged.

    The files of large results must be written before (`blobs.store`); `fingerprints`
    are ``(digest, identity, manifest JSON)`` of the code the results' records name.
    """
    rows: list[tuple[Any, ...]] = []
    for s in encoded:
        e = s.entry
        task_name, args = split_key(e.key)
        rows.append(
            (e.key, task_name, args, e.source, e.version, e.deps, s.codec, s.data, s.path, s.size,
             e.started, e.finished, s.digest, e.awaited)
        )  # fmt: skip
    now = time.time()
    with _transaction(conn):
        held, old_files = _held_by(conn, owner, [s.entry.key for s in encoded])
        kept = [s.entry.key for s in encoded if s.entry.key in held]
        dropped = [s for s in encoded if s.entry.key not in held]
        conn.executemany(
            "INSERT OR REPLACE INTO nodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [r for r in rows if r[0] in held],
        )
        if kept and conn.execute("SELECT EXISTS (SELECT 1 FROM failures)").fetchone()[0]:
            conn.executemany("DELETE FROM failures WHERE key=?", [(key,) for key in kept])
        for chunk in _chunks([*kept, *released]):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM leases WHERE owner=? AND key IN ({marks})", (owner, *chunk))
        conn.executemany(
            "INSERT OR REPLACE INTO failures VALUES (?,?,?,?)",
            [(k, name, err, now) for k, name, err in failures],
        )
        conn.executemany("INSERT OR IGNORE INTO fingerprints VALUES (?,?,?)", fingerprints)
        if run is not None:
            conn.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)", run)
        if attempts:
            batch = conn.execute(
                "SELECT coalesce(max(batch), -1) + 1 FROM attempts WHERE run=?", (owner,)
            ).fetchone()[0]
            data = zlib.compress(marshal.dumps(list(attempts)), 1)
            conn.execute("INSERT INTO attempts VALUES (?,?,?)", (owner, batch, data))
        if graph:
            batch = conn.execute(
                "SELECT coalesce(max(batch), -1) + 1 FROM graphs WHERE run=?", (owner,)
            ).fetchone()[0]
            conn.executemany(
                "INSERT INTO graphs VALUES (?,?,?)",
                [(owner, batch + i, part) for i, part in enumerate(graph)],
            )
        forgotten = [] if keep_runs is None else _forget_runs(conn, keep_runs)
    for s in dropped:
        log.warning("%s: another process computed it meanwhile; keeping its result", s.entry.key)
    return old_files + [s.path for s in dropped if s.path is not None], forgotten


def _forget_runs(conn: sqlite3.Connection, keep: int) -> list[str]:
    """Remove all but the latest `keep` runs from the history, with their attempts; return their ids."""
    old = [r for (r,) in conn.execute("SELECT id FROM runs ORDER BY started DESC LIMIT -1 OFFSET ?", (keep,))]
    for run in old:  # a run's attempts and graph are a range of their tables each
        conn.execute("DELETE FROM attempts WHERE run=?", (run,))
        conn.execute("DELETE FROM graphs WHERE run=?", (run,))
        conn.execute("DELETE FROM runs WHERE id=?", (run,))
    return old


def _attempts(run: str, data: bytes) -> list[Attempt]:
    """Decode a batch of attempts of `run` (see the ``attempts`` table); none if it is damaged."""
    try:
        rows: Any = marshal.loads(zlib.decompress(data))  # Any: a list of tuples, unless damaged
        return [Attempt(run, *row) for row in rows]
    except Exception:  # damaged, or from another Python's marshal: the history lacks it
        return []


def runs(conn: sqlite3.Connection, limit: int) -> list[RunRow]:
    """Return the latest `limit` runs of the history, the latest first."""
    rows = conn.execute("SELECT * FROM runs ORDER BY started DESC LIMIT ?", (limit,))
    return [RunRow(*row) for row in rows]


def attempts_of(conn: sqlite3.Connection, run: str) -> list[Attempt]:
    """Return every attempt of every body of `run`, in the order they started."""
    found = [
        a
        for (data,) in conn.execute("SELECT data FROM attempts WHERE run=?", (run,))
        for a in _attempts(run, data)
    ]
    return sorted(found, key=lambda a: a.started)


def attempts_of_node(conn: sqlite3.Connection, key: str, limit: int) -> list[Attempt]:
    """Return the latest `limit` attempts of the node `key`, over the runs kept, the latest first."""
    found = [
        a
        for run, data in conn.execute("SELECT run, data FROM attempts")
        for a in _attempts(run, data)
        if a.key == key
    ]
    return sorted(found, key=lambda a: a.started, reverse=True)[:limit]


def new_attempts_of_node(
    conn: sqlite3.Connection, key: str, seen: frozenset[tuple[str, int]]
) -> tuple[list[Attempt], list[tuple[str, int]]]:
    """Return the attempts of the node `key` in the batches not in `seen`, in the order they started, and those batches.

    For following a node: only the batches written since the last look are read and decoded.
    """
    batches = [b for b in conn.execute("SELECT run, batch FROM attempts").fetchall() if b not in seen]
    found: list[Attempt] = []
    for run, batch in batches:
        for (data,) in conn.execute("SELECT data FROM attempts WHERE run=? AND batch=?", (run, batch)):
            found.extend(a for a in _attempts(run, data) if a.key == key)
    return sorted(found, key=lambda a: a.started), [(run, batch) for run, batch in batches]


def release_all(conn: sqlite3.Connection, owner: str) -> None:
    """Drop every lease `owner` holds, its expiry, and the expiries past (of crashed runs)."""
    with _transaction(conn):
        conn.execute("DELETE FROM leases WHERE owner=?", (owner,))
        # An expired owner's leases bind no one, with its row or without: a paused run
        # that comes back renews its row (see `renew`), and with it the leases left to it.
        conn.execute("DELETE FROM owners WHERE owner=? OR expires < ?", (owner, time.time()))


def load(conn: sqlite3.Connection, wanted: Sequence[tuple[str, str]]) -> list[Stored | None]:
    """Return how the results of ``(key, version)`` pairs are stored (read them with `blobs.read`).

    None for a result that is gone, or was replaced by another version meanwhile.
    """
    rows: dict[str, tuple[str, Stored]] = {}
    keys = [key for key, _ in wanted]
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        query = f"SELECT key, version, codec, data, path, digest, task_name, args FROM nodes WHERE key IN ({marks})"
        for key, version, codec, data, path, digest, task_name, args in conn.execute(query, chunk):
            rows[key] = (version, Stored(codec, data, path, digest, key_matches(key, task_name, args)))
    out: list[Stored | None] = []
    for key, version in wanted:
        row = rows.get(key)
        out.append(None if row is None or row[0] != version else row[1])
    return out


def forget(conn: sqlite3.Connection, wanted: Sequence[tuple[str, str]]) -> list[str]:
    """Remove the records of ``(key, version)`` pairs (unreadable ones), unless replaced since.

    Returns:
        The files of the results removed (to be removed after).
    """
    files: list[str] = []
    with _transaction(conn):
        for key, version in wanted:
            row = conn.execute("SELECT path FROM nodes WHERE key=? AND version=?", (key, version)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM nodes WHERE key=? AND version=?", (key, version))
                if row[0] is not None:
                    files.append(row[0])
    return files


def delete(conn: sqlite3.Connection, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Remove the records of those of `keys` that have one.

    Returns:
        The keys removed, and the files of their results (to be removed after).
    """
    with _transaction(conn):
        found = lookup(conn, keys)
        held = [key for key in keys if key in found]
        files = _files_of(conn, held)
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM nodes WHERE key IN ({marks})", chunk)
            conn.execute(f"DELETE FROM failures WHERE key IN ({marks})", chunk)
    return held, files


def delete_class(conn: sqlite3.Connection, task_name: str) -> tuple[int, list[str]]:
    """Remove every record of one task class; return how many, and the files of their results."""
    # Keys are "task_name(arguments)": the class's keys are one range of the primary key.
    span = (f"{task_name}(", f"{task_name})")
    with _transaction(conn):
        files = [
            p
            for (p,) in conn.execute(
                "SELECT path FROM nodes WHERE key >= ? AND key < ? AND path IS NOT NULL", span
            )
        ]
        removed = conn.execute("DELETE FROM nodes WHERE key >= ? AND key < ?", span).rowcount
        conn.execute("DELETE FROM failures WHERE task_name=?", (task_name,))
    return removed, files


def _held_by(conn: sqlite3.Connection, owner: str, keys: Sequence[str]) -> tuple[set[str], list[str]]:
    """Return those of `keys` whose lease `owner` holds, and the files of their current results.

    Expired or not, a lease still there is held: no one took it over. Both in one query:
    a commit replaces those results, and removes their files after.
    """
    held: set[str] = set()
    files: list[str] = []
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT leases.key, nodes.path FROM leases LEFT JOIN nodes ON nodes.key = leases.key "
            f"WHERE leases.owner=? AND leases.key IN ({marks})",
            (owner, *chunk),
        )
        for key, path in rows:
            held.add(key)
            if path is not None:
                files.append(path)
    return held, files


def _files_of(conn: sqlite3.Connection, keys: Sequence[str]) -> list[str]:
    files: list[str] = []
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        files.extend(
            p
            for (p,) in conn.execute(
                f"SELECT path FROM nodes WHERE key IN ({marks}) AND path IS NOT NULL", chunk
            )
        )
    return files
