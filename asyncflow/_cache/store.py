"""Cache operations outside a run: read one result, clear nodes or a whole class, summarize."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import CacheError
from . import index, paths
from .index import Index

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from .._task import Task


async def load_result(cache_dir: Path, task: Task[Any, Any]) -> Any:
    """Return the cached result of `task`.

    Raises:
        CacheError: the cache holds no result for it.
    """
    idx = await Index.open(cache_dir, create=False)
    if idx is not None:
        try:
            found = await idx.call(index.lookup, [task._af_key])
            record = found.get(task._af_key)
            if record is not None:
                (value,) = await idx.call(index.load, cache_dir, [(task._af_key, record.version)])
                return value
        finally:
            await idx.close()
    raise CacheError(f"{task!r} has no cached result in {cache_dir}; run it first: await task.run()")


async def clear_nodes(cache_dir: Path, tasks: Sequence[Task[Any, Any]]) -> int:
    """Remove the results and task directories of `tasks`; return how many results existed."""
    idx = await Index.open(cache_dir, create=False)
    if idx is None:
        return 0
    try:
        removed = await idx.call(index.delete, cache_dir, [t._af_key for t in tasks])
    finally:
        await idx.close()
    dirs = [paths.task_directory(cache_dir, type(t).task_name, t.__dict__["_af_argtext"]) for t in tasks]
    await anyio.to_thread.run_sync(_remove_dirs, dirs)
    return removed


async def clear_class(cache_dir: Path, task_name: str) -> int:
    """Remove every result and task directory of one class; return how many results."""
    idx = await Index.open(cache_dir, create=False)
    if idx is None:
        return 0
    try:
        removed = await idx.call(index.delete_class, cache_dir, task_name)
    finally:
        await idx.close()
    await anyio.to_thread.run_sync(_remove_dirs, [paths.class_data_dir(cache_dir, task_name)])
    return removed


async def summarize(cache_dir: Path) -> list[index.ClassSummary] | None:
    """Return what the cache holds per task class; None when `cache_dir` has no index."""
    idx = await Index.open(cache_dir, create=False)
    if idx is None:
        return None
    try:
        return await idx.call(index.summarize)
    finally:
        await idx.close()


def _remove_dirs(dirs: Sequence[Path]) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
