"""Results as bytes: cloudpickle, then gzip at the class's level; large ones in files, written atomically.

The index (`index.py`) keeps the small encoded results inline and the names of the
files of the large ones; this module does the encoding and every result file's I/O.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from typing import TYPE_CHECKING, Any

import cloudpickle  # pyright: ignore[reportMissingTypeStubs]  # untyped; wrapped here

from . import paths

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path
    from types import ModuleType

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
    data: bytes = cloudpickle.dumps(value, protocol=5)  # pyright: ignore[reportUnknownMemberType]  # untyped
    return data


def register_by_value(module: ModuleType) -> None:
    """Pickle what `module` defines by value: another process could not import it."""
    cloudpickle.register_pickle_by_value(module)  # pyright: ignore[reportUnknownMemberType]  # untyped


def loads(data: bytes) -> Any:
    """Unpickle what `dumps` made; Any: whatever was pickled."""
    return cloudpickle.loads(data)


def compress(pickled: bytes, level: int) -> tuple[int, bytes]:
    """Return ``(codec, data)``: the pickle as is at level 0 or when tiny, gzip otherwise."""
    if level == 0 or len(pickled) < COMPRESS_MIN:
        return RAW, pickled
    encoder = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    return GZIP, encoder.compress(pickled) + encoder.flush()


def decode(codec: int, data: bytes) -> Any:
    """Return the result stored as ``(codec, data)``."""
    if codec == GZIP:
        data = gzip.decompress(data)
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


def read(cache_dir: Path, codec: int, data: bytes | None, name: str | None) -> Any:
    """Return a stored result: `data` inline, or the contents of result file `name`."""
    if name is not None:
        data = (paths.results_dir(cache_dir) / name).read_bytes()
    assert data is not None, "asyncflow bug: a record has neither data nor a file"
    return decode(codec, data)


def remove(cache_dir: Path, names: Iterable[str]) -> None:
    """Remove result files (of results replaced or cleared); a missing one is no matter."""
    base = paths.results_dir(cache_dir)
    for name in names:
        (base / name).unlink(missing_ok=True)


def write_atomic(path: Path, tmp_dir: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees all of it or nothing."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
