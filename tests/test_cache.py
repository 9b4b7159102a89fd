"""The cache: layout, WAL index, blobs, schema, clear, bad caches."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from asyncflow import CacheError, Task
from asyncflow._cache.index import SCHEMA_VERSION

from .workflows import TASKFILE_TEMPLATE, load_taskfile

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


async def test_clear_makes_dependents_stale(cache_dir: Path, tmp_path: Path) -> None:
    module = load_taskfile(tmp_path / "tf.py", TASKFILE_TEMPLATE.format(leaf_op="+ 1", comment=""))
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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert (
        conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL").fetchall() == []
    )
    conn.close()


async def test_a_schema_2_cache_runs_again_once(cache_dir: Path) -> None:
    # asyncflow 0.1's records hold AST hashes of class sources: no fingerprint matches them.
    await Plain().run(cache_dir=cache_dir)
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    conn.execute("DROP TABLE fingerprints")
    conn.execute("DROP TABLE files")
    conn.execute("UPDATE nodes SET source='0f1e2d3c4b5a69788796a5b4c3d2e1f0'")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    _, stats = await Plain().run_with_stats(cache_dir=cache_dir)
    assert (stats.run, stats.reused) == (1, 0)
    _, stats = await Plain().run_with_stats(cache_dir=cache_dir)
    assert (stats.run, stats.reused) == (0, 1)


async def test_a_schema_3_index_gains_digests_and_keeps_its_records(cache_dir: Path) -> None:
    await Plain().run(cache_dir=cache_dir)
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    conn.execute("ALTER TABLE nodes DROP COLUMN digest")  # as schema 3 had it
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    value, stats = await Plain().run_with_stats(cache_dir=cache_dir)
    assert (value, stats.reused) == (list(range(10)), 1)  # read unchecked: it has no digest
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT digest FROM nodes").fetchall() == [(None,)]
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
