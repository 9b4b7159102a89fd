"""Where everything lives under ``<cache_dir>/asyncflow/``. No I/O here but `make_dirs`."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from .._hashing import blake2b
from .._keys import split_key

if TYPE_CHECKING:
    from pathlib import Path

INDEX = "index.sqlite"
# Modes of what asyncflow creates: never group- or world-writable, since loading a result
# runs code; job files (a payload may hold secrets) are the owner's only. Given at
# creation, whatever the umask (which may take bits away, never add them).
DIR = 0o755
FILE = 0o644  # result files, the index (SQLite gives its -wal and -shm files the same)
PRIVATE_DIR = 0o700  # job directories
PRIVATE_FILE = 0o600  # job payloads and answers


def make_dirs(path: Path, mode: int = DIR) -> None:
    """Create directory `path` and its missing parents, each with `mode`; leave those that exist as they are."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile, by another process
            os.mkdir(directory, mode)


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


def logs_dir(cache_dir: Path, run: str) -> Path:
    """Return where the output of the bodies of the run `run` (its id) is kept."""
    return root(cache_dir) / "logs" / run.replace(":", "-").replace("/", "-")


def log_name(key: str, attempt: int) -> str:
    """Return the file name of the output of an attempt of the node `key`, in its run's `logs_dir`."""
    digest = blake2b(key.encode(), digest_size=10).hexdigest()
    return f"{digest}-{attempt}.log"


def class_data_dir(cache_dir: Path, task_name: str) -> Path:
    """Return the parent of every task directory of one class."""
    return root(cache_dir) / "data" / task_name


def task_directory(cache_dir: Path, key: str) -> Path:
    """Return the task directory of the node `key` (its arguments hashed into the name)."""
    task_name, argtext = split_key(key)
    digest = blake2b(argtext.encode(), digest_size=10).hexdigest()
    return class_data_dir(cache_dir, task_name) / digest
