"""Results as bytes: cloudpickle, then gzip at the class's level; large ones in files, written atomically.

The index (`index.py`) keeps the small encoded results inline and the names of the
files of the large ones; this module does the encoding and every result file's I/O.
Every stored result carries a digest of the bytes stored, checked when they are read:
a damaged entry is never decoded into a wrong value.

Loading a pickle runs code, so no file asyncflow writes is group- or world-writable,
whatever the umask: each is created with its mode (`paths.FILE`, `paths.PRIVATE_FILE`
for job files, which may hold secrets), never chmod-ed after.
"""

from __future__ import annotations

import pickle
import zlib
from typing import TYPE_CHECKING, Any

from .. import _atomic
from .._errors import UnreadableResultError
from .._hashing import blake2b
from . import paths

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path
    from types import ModuleType

    from .index import Stored

RAW = 0
GZIP = 1
INLINE_MAX = 64 * 1024  # larger encoded results go to a file of their own
# Below this many bytes a pickle is kept as it is: gzip's own 18-byte frame outweighs
# anything it could save, and setting up a compressor costs more than the rest of a write.
COMPRESS_MIN = 128


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def dumps(value: object) -> bytes:
    """Pickle a value (by value where its class cannot be imported elsewhere)."""
    if type(value) in _PLAIN:  # the standard pickler is 5x faster and means the same here
        return pickle.dumps(value, protocol=5)
    # Imported on first use: a run whose results are all plain values never needs it.
    import cloudpickle  # pyright: ignore[reportMissingTypeStubs]  # untyped; wrapped here

    data: bytes = cloudpickle.dumps(value, protocol=5)  # pyright: ignore[reportUnknownMemberType]  # untyped
    return data


def register_by_value(module: ModuleType) -> None:
    """Pickle what `module` defines by value: another process could not import it."""
    import cloudpickle  # pyright: ignore[reportMissingTypeStubs]  # untyped

    cloudpickle.register_pickle_by_value(module)  # pyright: ignore[reportUnknownMemberType]  # untyped


def loads(data: bytes) -> Any:
    """Unpickle what `dumps` made; Any: whatever was pickled."""
    return pickle.loads(data)  # cloudpickle's loads is pickle's: what it pickled imports what it needs


def compress(pickled: bytes, level: int) -> tuple[int, bytes]:
    """Return ``(codec, data)``: the pickle as is at level 0 or when tiny, gzip otherwise."""
    if level == 0 or len(pickled) < COMPRESS_MIN:
        return RAW, pickled
    encoder = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    return GZIP, encoder.compress(pickled) + encoder.flush()


def digest(data: bytes) -> bytes:
    """Hash the bytes of a stored result (as stored: encoded), as its record keeps it."""
    return blake2b(data, digest_size=16).digest()


def decode(codec: int, data: bytes) -> Any:
    """Return the result stored as ``(codec, data)``."""
    if codec == GZIP:
        # wbits 31: one gzip member, as `compress` writes it, read without the gzip module's import.
        data = zlib.decompress(data, 31)
    return loads(data)


def store(cache_dir: Path, version: str, data: bytes) -> str | None:
    """Write encoded `data` to a result file if it is too large for the index.

    Returns:
        The file's name under the results directory, or None: keep `data` inline.
    """
    if len(data) <= INLINE_MAX:
        return None
    name = f"{version[:2]}/{version}"
    write_atomic(paths.results_dir(cache_dir) / name, paths.tmp_dir(cache_dir), data)
    return name


def read_bytes(cache_dir: Path, key: str, stored: Stored) -> bytes:
    """Return the bytes of a stored result (inline, or its file's), checked against its digest.

    A damaged record may point at another result's file or hold values of other types
    than were written (SQLite keeps a type per value): neither passes for the result.

    Raises:
        UnreadableResultError: its file is missing or unreadable, or the bytes do not match.
    """
    if not stored.whole:
        raise _unreadable(key, "its record is damaged (its key does not match its task and arguments)")
    data = stored.data
    try:
        if stored.path is not None:
            data = (paths.results_dir(cache_dir) / stored.path).read_bytes()
    except FileNotFoundError:
        raise _unreadable(key, f"its result file {stored.path} is missing") from None
    except OSError as exc:
        raise _unreadable(key, f"its result file {stored.path} cannot be read ({exc})") from exc
    except TypeError as exc:  # a file name that is not text
        raise _unreadable(key, "its record is damaged (a value of the wrong type)") from exc
    if not isinstance(data, bytes):  # no data, or a value of another type
        raise _unreadable(key, "its record is damaged (a value of the wrong type)")
    # A record from before digests (schema 3) has none: it is decoded unchecked.
    if stored.digest is not None and digest(data) != stored.digest:
        where = "its record" if stored.path is None else f"its result file {stored.path}"
        raise _unreadable(key, f"{where} is damaged (its digest does not match)")
    return data


def _unreadable(key: str, reason: str) -> UnreadableResultError:
    return UnreadableResultError(
        f"the cached result of {key} cannot be read: {reason}", task=key, reason=reason
    )


def read(cache_dir: Path, key: str, stored: Stored) -> Any:
    """Return a stored result, checked (see `read_bytes`) and decoded.

    Raises:
        UnreadableResultError: it cannot be read, does not match its digest, or does not
            unpickle here (e.g. its class was renamed or its module removed since).
    """
    data = read_bytes(cache_dir, key, stored)
    try:
        return decode(stored.codec, data)
    except Exception as exc:  # any failure to decode: the entry is of no use
        raise _unreadable(key, f"it does not unpickle here ({type(exc).__name__}: {exc})") from exc


def remove(cache_dir: Path, names: Iterable[str]) -> None:
    """Remove result files (of results replaced or cleared); a missing one is no matter."""
    base = paths.results_dir(cache_dir)
    for name in names:
        (base / name).unlink(missing_ok=True)


def write_atomic(path: Path, tmp_dir: Path, data: bytes, *, private: bool = False) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees all of it or nothing.

    The file is readable by all (`private`: by its owner only), and writable by its
    owner only. When writing fails (a full disk), the partial temporary file is removed.
    """
    dir_mode, file_mode = (paths.PRIVATE_DIR, paths.PRIVATE_FILE) if private else (paths.DIR, paths.FILE)
    paths.make_dirs(tmp_dir, dir_mode)
    paths.make_dirs(path.parent, dir_mode)
    _atomic.write_atomic(str(path), str(tmp_dir), data, file_mode)
