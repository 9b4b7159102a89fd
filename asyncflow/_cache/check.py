"""Finding damage in a cache (`asyncflow check`), and repairing it: what cannot be read goes.

Checked: SQLite's own integrity check of the index, and every stored result against its
digest (its file present and whole). Not checked: whether a result still unpickles (that
needs the user's code; a run finds it, see `_scheduler.py`). Repairing removes the damaged
entries (they run again next time), the result files no record names and the temporary
files of writers that died; an index SQLite finds malformed is rebuilt from the rows it
can still read, and the damaged file is kept beside it. Run on a worker thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import CacheError, UnreadableResultError
from . import blobs, index, paths
from .index import Stored, key_matches

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

# Files younger than this may belong to a run going on: a result file is written before
# the record naming it, a temporary file before it is renamed into place.
_SETTLING = 600.0  # seconds


class Damaged(NamedTuple):
    """A stored result that cannot be read back."""

    key: str
    version: str
    reason: str


@dataclass
class Report:
    """What `check` found in a cache, and what it repaired."""

    index: Path
    problems: list[str] = field(default_factory=list[str])  # SQLite's integrity check; [] when ok
    checked: int = 0  # results whose digests were checked
    unchecked: int = 0  # results stored before digests: only their files' presence checked
    damaged: list[Damaged] = field(default_factory=list[Damaged])
    orphans: list[str] = field(default_factory=list[str])  # result files no record names
    leftovers: list[str] = field(default_factory=list[str])  # temporary files of dead writers
    repaired: bool = False
    kept_aside: Path | None = None  # the damaged index, when it was rebuilt

    @property
    def clean(self) -> bool:
        """Whether nothing needs repairing (unreferenced and leftover files do not count)."""
        return not self.problems and not self.damaged


def check(cache_dir: Path, repair: bool) -> Report | None:
    """Check (and with `repair`, repair) the cache of `cache_dir`; None when it has no index.

    Repair the index only when no workflow runs on this cache: a rebuilt index replaces the file.
    """
    path = paths.index_path(cache_dir)
    if not path.exists():
        return None
    report = Report(path)
    names: set[str] = set()
    try:
        conn = index.connect(cache_dir)  # brings an older index up to date
    except CacheError as exc:
        if not isinstance(exc.__cause__, sqlite3.DatabaseError):  # a newer asyncflow's: not damage
            raise
        report.problems = [str(exc.__cause__)]
    else:
        assert conn is not None, "asyncflow bug: an index that exists did not open"
        conn.text_factory = _text
        try:
            report.problems = _integrity(conn)
            names = _check_results(conn, cache_dir, report)
            if repair and not report.problems and report.damaged:
                blobs.remove(cache_dir, index.forget(conn, [(d.key, d.version) for d in report.damaged]))
        finally:
            conn.close()
    if repair and report.problems:
        report.kept_aside = _rebuild(cache_dir, path)
        names = _named_files(path)
    report.orphans, report.leftovers = _strays(cache_dir, names)
    if repair:
        blobs.remove(cache_dir, report.orphans)
        for name in report.leftovers:
            (paths.tmp_dir(cache_dir) / name).unlink(missing_ok=True)
        report.repaired = True
    return report


def _integrity(conn: sqlite3.Connection) -> list[str]:
    try:
        rows = [row[0] for row in conn.execute("PRAGMA integrity_check(100)")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def _check_results(conn: sqlite3.Connection, cache_dir: Path, report: Report) -> set[str]:
    """Check every stored result against its digest; return the result files records name."""
    names: set[str] = set()
    try:
        for row in conn.execute("SELECT * FROM nodes"):
            key, version, stored = _stored(row)
            if _garbled(row):
                report.problems.append(f"the record of {key} holds text that is not UTF-8")
                continue
            if stored.path is not None:
                names.add(stored.path)
            if stored.digest is None:
                report.unchecked += 1
            else:
                report.checked += 1
            try:
                blobs.read_bytes(cache_dir, key, stored)
            except UnreadableResultError as exc:
                report.damaged.append(Damaged(key, version, exc.reason))
    except sqlite3.DatabaseError as exc:  # a damaged page: SQLite's integrity check says more
        if not report.problems:
            report.problems.append(str(exc))
    return names


_NOT_TEXT = "\ufffd"  # what undecodable bytes become


def _text(data: bytes) -> str:
    """Decode a text column; damaged bytes become U+FFFD instead of failing the whole query."""
    return data.decode("utf-8", "replace")


def _garbled(row: Sequence[Any]) -> bool:
    """Tell whether a row holds text that was not UTF-8 (decoded by `_text`): a damaged record."""
    return any(isinstance(v, str) and _NOT_TEXT in v for v in row)


def _stored(row: Sequence[Any]) -> tuple[str, str, Stored]:
    """Return key, version and how the result is stored, from a whole row of ``nodes``."""
    digest = row[12] if len(row) > 12 else None  # an index older than digests has no column
    return row[0], row[4], Stored(row[6], row[7], row[8], digest, key_matches(row[0], row[1], row[2]))


def _named_files(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {p for (p,) in conn.execute("SELECT path FROM nodes WHERE path IS NOT NULL")}
    finally:
        conn.close()


def _strays(cache_dir: Path, names: set[str]) -> tuple[list[str], list[str]]:
    """Return the result files no record names, and the temporary files of dead writers."""
    now = time.time()
    orphans: list[str] = []
    results = paths.results_dir(cache_dir)
    if results.is_dir():
        for entry in sorted(results.rglob("*")):
            name = entry.relative_to(results).as_posix()
            if entry.is_file() and name not in names and now - entry.stat().st_mtime > _SETTLING:
                orphans.append(name)
    tmp = paths.tmp_dir(cache_dir)
    leftovers = [
        entry.name
        for entry in (sorted(tmp.iterdir()) if tmp.is_dir() else [])
        if entry.is_file() and (_writer_dead(entry.name) or now - entry.stat().st_mtime > _SETTLING)
    ]
    return orphans, leftovers


def _writer_dead(name: str) -> bool:
    """Tell whether the process that wrote temporary file `name` (``NAME.PID.tmp``) is gone."""
    parts = name.split(".")
    if len(parts) < 3 or parts[-1] != "tmp" or not parts[-2].isdigit():
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _rebuild(cache_dir: Path, path: Path) -> Path:
    """Replace the index at `path` by one of the rows SQLite can still read; return where the old one went.

    Rows are read from both ends of each table, so that a damaged page loses only what
    it holds. Results are kept only if they match their digests.
    """
    fresh = path.with_name(f"{path.name}.rebuild")
    fresh.unlink(missing_ok=True)
    new = index.create_at(fresh)
    try:
        try:
            old = sqlite3.connect(path, isolation_level=None)
        except sqlite3.DatabaseError:
            pass  # nothing can be read: the new index starts empty
        else:
            old.text_factory = _text  # text that is not UTF-8 fails no query, only its row
            try:
                _copy(old, new, cache_dir)
            finally:
                old.close()
        new.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        new.close()
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(fresh, path)
    for suffix in ("-wal", "-shm"):
        fresh.with_name(fresh.name + suffix).unlink(missing_ok=True)
    return aside


def _copy(old: sqlite3.Connection, new: sqlite3.Connection, cache_dir: Path) -> None:
    nodes: dict[str, tuple[Any, ...]] = {}
    for row in _readable(old, "nodes", "key"):
        key, _, stored = _stored(row)
        if _garbled(row):
            continue
        try:
            blobs.read_bytes(cache_dir, key, stored)
        except UnreadableResultError:
            continue
        nodes[key] = (*row, None, None)[:14]  # an older index lacks the digest, awaited columns
    new.execute("BEGIN")
    new.executemany("INSERT OR REPLACE INTO nodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", nodes.values())
    for table, width in (("fingerprints", 3), ("files", 7), ("failures", 4), ("runs", 10), ("attempts", 3)):
        rows = list(_readable(old, table, "1"))
        new.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * width)})", rows)
    new.execute("COMMIT")


def _readable(conn: sqlite3.Connection, table: str, order: str) -> Iterator[tuple[Any, ...]]:
    """Yield the rows of `table` that can be read, from its first row on, then from its last back."""
    for direction in ("ASC", "DESC"):
        try:
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order} {direction}"):
                yield tuple(row)
        except sqlite3.DatabaseError:
            continue
