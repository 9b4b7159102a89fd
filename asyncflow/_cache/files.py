"""Digests of input files (`asyncflow.File`), read again only when a file's stat changes.

The index's ``files`` table keeps, per absolute path, the size, mtime and inode a file
had when its content was hashed, and when that was. A file whose stat is the same is not
read again, unless it changed within a second of being hashed (a write in the same
mtime tick as the hash would go unseen: the "racy clean" case git knows). A directory's
digest covers the relative name of every directory and file under it and each file's
content, each file cached the same way. Runs on the index's worker thread.
"""

from __future__ import annotations

import os
import stat
import time
from typing import TYPE_CHECKING, NamedTuple

from .._hashing import blake2b
from . import index

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

_CHUNK = 1 << 20  # bytes read at a time
_RACY_NS = 1_000_000_000  # a file changed this close to its hashing is hashed again


class Inputs(NamedTuple):
    """The digests of some input paths, when each last changed, and why some have none."""

    digests: dict[str, str]
    changed: dict[str, float]  # epoch seconds when the path's digest last changed
    problems: dict[str, str]  # path -> what is wrong: "does not exist", "cannot be read (...)"


class _Row(NamedTuple):
    size: int
    mtime_ns: int
    inode: int
    digest: str
    hashed_ns: int
    changed: float


class _Digests:
    """The digests of one call: rows known to the index, and the rows to write back."""

    def __init__(self, known: dict[str, _Row]) -> None:
        self.known = known
        self.updates: dict[str, _Row] = {}

    def row(self, path: str) -> _Row | None:
        return self.updates.get(path) or self.known.get(path)

    def of_file(self, path: str, st: os.stat_result) -> str:
        row = self.row(path)
        if (
            row is not None
            and (row.size, row.mtime_ns, row.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
            and st.st_mtime_ns < row.hashed_ns - _RACY_NS
        ):
            return row.digest
        return self.note(path, st, _hash_file(path))

    def of_tree(self, root: str, st: os.stat_result) -> str:
        lines: list[str] = []
        for current, dirs, files in os.walk(root):
            dirs.sort()
            rel = os.path.relpath(current, root)
            lines.extend(f"d {os.path.join(rel, d)}" for d in dirs)
            for name in sorted(files):
                path = os.path.join(current, name)
                try:
                    line = f"f {os.path.join(rel, name)} {self.of_file(path, os.stat(path))}"
                except OSError as exc:  # a dangling link, removed meanwhile, unreadable
                    line = f"x {os.path.join(rel, name)} {type(exc).__name__}"
                lines.append(line)
        digest = blake2b("\n".join(lines).encode(), digest_size=16).hexdigest()
        row = self.row(root)
        return row.digest if row is not None and row.digest == digest else self.note(root, st, digest)

    def note(self, path: str, st: os.stat_result, digest: str) -> str:
        row = self.row(path)
        changed = row.changed if row is not None and row.digest == digest else time.time()
        self.updates[path] = _Row(st.st_size, st.st_mtime_ns, st.st_ino, digest, time.time_ns(), changed)
        return digest


def digest_inputs(conn: sqlite3.Connection | None, paths: Sequence[str]) -> Inputs:
    """Return the digest of each of `paths` (files or directories), using and updating the index.

    With `conn` None (no index yet), everything is hashed and nothing is kept.
    """
    wanted = list(dict.fromkeys(paths))
    digests = _Digests(_rows(conn, wanted))
    out = Inputs({}, {}, {})
    for path in wanted:
        try:
            st = os.stat(path)
            is_dir = stat.S_ISDIR(st.st_mode)
            out.digests[path] = digests.of_tree(path, st) if is_dir else digests.of_file(path, st)
        except FileNotFoundError:
            out.problems[path] = "does not exist"
            continue
        except OSError as exc:
            out.problems[path] = f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
            continue
        row = digests.row(path)
        assert row is not None, "asyncflow bug: a digest without its row"
        out.changed[path] = row.changed
    if conn is not None and digests.updates:
        index.note_files(conn, [(path, *row) for path, row in digests.updates.items()])
    return out


def _rows(conn: sqlite3.Connection | None, paths: Sequence[str]) -> dict[str, _Row]:
    """Return the index's rows of `paths` and of everything under them (for directories)."""
    if conn is None:
        return {}
    rows = index.file_rows(conn, paths).items()
    return {path: _Row(*row) for path, row in rows if tuple(map(type, row)) in _ROW_TYPES}


# A row whose values have other types was damaged on disk: its file is hashed again.
_ROW_TYPES = {(int, int, int, str, int, changed) for changed in (int, float)}


def _hash_file(path: str) -> str:
    digest = blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
