"""The cache: layout, WAL index, blobs, source-change detection, clear, bad caches."""

from __future__ import annotations

import importlib.util
import inspect
import random
import sqlite3
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from asyncflow import CacheError, Task

DATA: dict[str, int] = {}


class Big(Task, compress_level=6):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> bytes:
        return random.Random(self.n).randbytes(self.n)  # incompressible


class Plain(Task):
    async def run_task(self) -> list[int]:
        return list(range(10))


async def test_layout_wal_and_blobs(cache_dir: Path) -> None:
    expected = random.Random(256 * 1024).randbytes(256 * 1024)
    assert await Big(256 * 1024).run(cache_dir=cache_dir) == expected
    assert await Plain().run(cache_dir=cache_dir) == list(range(10))
    root = cache_dir / "asyncflow"
    conn = sqlite3.connect(root / "index.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = dict(conn.execute("SELECT task_name, path FROM nodes").fetchall())
    assert rows[Plain.task_name] is None  # small: inside the index
    big_file = root / "results" / rows[Big.task_name]
    assert big_file.exists()
    assert big_file.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as compress_level=6 asks
    # Read back from disk, not memory.
    assert await Big(256 * 1024).result(cache_dir=cache_dir) == expected


class Text(Task, compress_level=9):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> str:
        return "abc" * self.n


async def test_tiny_results_are_stored_raw_larger_ones_gzip(cache_dir: Path) -> None:
    assert await Text(2).run(cache_dir=cache_dir) == "abc" * 2
    assert await Text(1000).run(cache_dir=cache_dir) == "abc" * 1000
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    rows = dict(conn.execute("SELECT args, codec FROM nodes").fetchall())
    assert rows == {"2": 0, "1000": 1}  # gzip's frame would outweigh a 20-byte pickle
    assert await Text(2).result(cache_dir=cache_dir) == "abc" * 2
    assert await Text(1000).result(cache_dir=cache_dir) == "abc" * 1000


def _load(path: Path, source: str) -> ModuleType:
    path.write_text(textwrap.dedent(source))
    name = f"af_src_{abs(hash((str(path), source)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


TEMPLATE = """
from asyncflow import Task, Requires

class Leaf(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        return self.i {leaf_op}

class Root(Task):
    leaf: Requires[int]

    def build_task(self) -> None:
        self.leaf = Leaf(3)  # {comment}

    async def run_task(self) -> int:
        return self.leaf * 10
"""


def _stats(module: Any, cache_dir: Path, **options: Any) -> tuple[int, dict[str, int]]:
    value, stats = module.Root().run_graph_with_stats(cache_dir=cache_dir, **options)
    return value, {name.rsplit(".", 1)[1]: s.run for name, s in stats.items()}


def test_source_change_reruns_changed_class_and_dependents(tmp_path: Path, cache_dir: Path) -> None:
    # Both versions live at the same path and module name, as an edited file would.
    path = tmp_path / "taskfile.py"
    v1 = _load(path, TEMPLATE.format(leaf_op="+ 1", comment="a comment"))
    assert _stats(v1, cache_dir) == (40, {"Leaf": 1, "Root": 1})
    # A comment or formatting change is not a code change.
    v1b = _load(path, TEMPLATE.format(leaf_op="+   1", comment="another comment"))
    v1b.Leaf.task_name, v1b.Root.task_name = v1.Leaf.task_name, v1.Root.task_name
    assert _stats(v1b, cache_dir) == (40, {"Leaf": 0, "Root": 0})


def test_code_change_is_detected(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "taskfile.py"
    v1 = _load(path, TEMPLATE.format(leaf_op="+ 1", comment=""))
    assert _stats(v1, cache_dir)[0] == 40
    v2 = _load(path, TEMPLATE.format(leaf_op="+ 2", comment=""))
    v2.Leaf.task_name, v2.Root.task_name = v1.Leaf.task_name, v1.Root.task_name
    # Turned off by option or environment: the stale code's result is reused.
    assert _stats(v2, cache_dir, detect_source_change=False) == (40, {"Leaf": 0, "Root": 0})
    monkeypatch.setenv("AF_DETECT_SOURCE_CHANGE", "0")
    assert _stats(v2, cache_dir) == (40, {"Leaf": 0, "Root": 0})
    monkeypatch.delenv("AF_DETECT_SOURCE_CHANGE")
    # On (the default): Leaf re-runs, and Root because its upstream changed.
    assert _stats(v2, cache_dir) == (50, {"Leaf": 1, "Root": 1})


async def test_clear_makes_dependents_stale(cache_dir: Path, tmp_path: Path) -> None:
    module = _load(tmp_path / "tf.py", TEMPLATE.format(leaf_op="+ 1", comment=""))
    await module.Root().run(cache_dir=cache_dir)
    assert await module.Leaf(3).clear(cache_dir=cache_dir) is True
    _, stats = await module.Root().run_with_stats(cache_dir=cache_dir)
    assert stats.run == 2
    assert await module.Leaf.clear_all(cache_dir=cache_dir) == 1
    _, stats = await module.Root().run_with_stats(cache_dir=cache_dir)
    assert stats.run == 2


async def test_newer_schema_is_refused(cache_dir: Path) -> None:
    await Plain().run(cache_dir=cache_dir)
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(CacheError, match="newer asyncflow"):
        await Plain().run(cache_dir=cache_dir)


async def test_a_schema_1_index_is_upgraded_in_place(cache_dir: Path) -> None:
    await Plain().run(cache_dir=cache_dir)
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    conn.execute("CREATE INDEX nodes_by_class ON nodes (task_name)")  # as schema 1 had
    conn.execute("CREATE INDEX leases_by_owner ON leases (owner)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    value, stats = await Plain().run_with_stats(cache_dir=cache_dir)
    assert (value, stats.reused) == (list(range(10)), 1)  # the record survived
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert (
        conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL").fetchall() == []
    )
    conn.close()


class Twin(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> int:
        return self.n


class Twin2(Twin):  # its name starts with Twin's: clearing Twin must leave it
    pass


async def test_clear_all_removes_one_class_only(cache_dir: Path) -> None:
    for n in range(3):
        await Twin(n).run(cache_dir=cache_dir)
        await Twin2(n).run(cache_dir=cache_dir)
    assert await Twin.clear_all(cache_dir=cache_dir) == 3
    _, stats = await Twin2(1).run_with_stats(cache_dir=cache_dir)
    assert stats.reused == 1
    _, stats = await Twin(1).run_with_stats(cache_dir=cache_dir)
    assert stats.run == 1


async def test_garbage_index_is_a_clear_error(cache_dir: Path) -> None:
    (cache_dir / "asyncflow").mkdir(parents=True)
    (cache_dir / "asyncflow" / "index.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(CacheError, match="remove"):
        await Plain().run(cache_dir=cache_dir)


async def test_cache_error_during_a_run_is_not_wrapped(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncflow._cache import session

    async def broken(self: object, keys: object) -> object:
        raise CacheError("the disk is on fire")

    monkeypatch.setattr(session.CacheSession, "acquire_many", broken)
    with pytest.raises(CacheError, match="on fire"):
        await Plain().run(cache_dir=cache_dir)


NESTED = '''
import typing
from asyncflow import Task

def deco(cls):
    return cls

@deco
class Decorated(Task):
    """Docstrings do not count."""

    async def run_task(self) -> int:
        return 1

class Outer:
    class Inner(Task):
        async def run_task(self) -> int:
            return 2

def factory():
    class Local(Task):
        async def run_task(self) -> int:
            return 3
    return Local

if not typing.TYPE_CHECKING:
    class Guarded(Task):
        async def run_task(self) -> int:
            return 4
'''


def test_class_source_is_found_in_its_file_as_inspect_finds_it(tmp_path: Path) -> None:
    import ast

    from asyncflow import _source

    module = _load(tmp_path / "nested.py", NESTED)
    for cls in (module.Decorated, module.Outer.Inner, module.factory(), module.Guarded):
        assert _source._class_in_file(cls) is not None, cls.__qualname__
        by_inspect = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        assert _source._normalised_source(cls) == ast.dump(_source._DropDocstrings().visit(by_inspect))
