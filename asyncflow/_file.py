"""`File`: an input file or directory tree whose content, not only its path, is a task's input.

A task argument ``File("data/a.csv")`` (also inside lists, tuples and dicts) keeps its
path in the node's key, and the digest of its content (of every file under a directory,
with their names) in the node's inputs: when the content changes, the node is stale. The
digests are computed, and kept with the file's size, mtime and inode so that an
unchanged file is not read again, by the cache (`_cache/files.py`). No I/O here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import _keys

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path


MARK = "File("  # how a file's key starts: a key without it takes no input file


class File(os.PathLike[str]):
    """An input file or directory a task reads: ``Count(File("data/a.csv"))``.

    The node is stale when the file's content changes (a directory: the names and contents
    of every file under it). `path` is absolute, resolved when the `File` is made, so a
    body running in another process or directory reads the same file; the key keeps the
    path as given. A missing file is an error before anything runs.

    Args:
        path: the file or directory, relative to the current directory or absolute.

    Attributes:
        path: the file's absolute path.
    """

    __slots__ = ("__af_key__", "path")
    path: Path
    __af_key__: str
    """How the file reads in a node's key: ``File('data/a.csv')``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from pathlib import Path  # here: `import asyncflow` spares pathlib's import

        given: str = os.path.normpath(os.fspath(path))
        self.path = Path(os.path.abspath(given))
        self.__af_key__ = f"{MARK}{given!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return self.__af_key__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __reduce__(self) -> tuple[Any, ...]:
        # Travel as the absolute path: a worker elsewhere resolves nothing again.
        return (_rebuild, (str(self.path), self.__af_key__))


def _rebuild(path: str, key: str) -> File:
    from pathlib import Path

    file = File.__new__(File)
    file.path = Path(path)
    file.__af_key__ = key
    return file


def files_in(values: Iterable[object]) -> list[File]:
    """Return the `File` objects inside task arguments, wherever their keys hold them.

    Found as the key encodes the arguments (in lists, dicts, dataclasses, registered
    types...), so that a file in the key is never left out of the inputs. Each once, in
    the order of their paths (a set's order changes from process to process).
    """
    found: set[File] = set()
    stack: list[object] = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, File):
            found.add(value)
        else:
            stack.extend(_keys.parts_of(value))
    return sorted(found, key=lambda f: str(f.path))
