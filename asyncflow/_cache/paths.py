"""Where everything lives under ``<cache_dir>/asyncflow/``. No I/O here."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .._keys import split_key

if TYPE_CHECKING:
    from pathlib import Path

INDEX = "index.sqlite"


def root(cache_dir: Path) -> Path:
    """Return the directory asyncflow owns inside `cache_dir`."""
    return cache_dir / "asyncflow"


def index_path(cache_dir: Path) -> Path:
    """Return the SQLite index of `cache_dir`."""
    return root(cache_dir) / INDEX


def results_dir(cache_dir: Path) -> Path:
    """Return where results too large to live in the index are kept, one file each."""
    return root(cache_dir) / "results"


def tmp_dir(cache_dir: Path) -> Path:
    """Return where files are written before being renamed into place."""
    return root(cache_dir) / "tmp"


def class_data_dir(cache_dir: Path, task_name: str) -> Path:
    """Return the parent of every task directory of one class."""
    return root(cache_dir) / "data" / task_name


def task_directory(cache_dir: Path, key: str) -> Path:
    """Return the task directory of the node `key` (its arguments hashed into the name)."""
    task_name, argtext = split_key(key)
    digest = hashlib.blake2b(argtext.encode(), digest_size=10).hexdigest()
    return class_data_dir(cache_dir, task_name) / digest
