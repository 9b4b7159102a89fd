"""The cache: layout, WAL index, blobs, schema, clear, bad caches."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from asyncflow import CacheError, Requires, RequiresList, Task
from asyncflow._cache import index
from asyncflow._cache.index import SCHEMA_VERSION
from asyncflow._runners import payload

from .test_runners_prefix import Where
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


async def test_a_schema_7_index_keeps_its_live_leases(cache_dir: Path) -> None:
    # Schema 7 kept an expiry per lease; 8 keeps one per owner, the latest of its leases'.
    await Plain().run(cache_dir=cache_dir)
    path = cache_dir / "asyncflow" / "index.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE owners")
    conn.execute("DROP TABLE leases")
    conn.execute(
        "CREATE TABLE leases (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID"
    )
    live, gone = "elsewhere:1:live", "elsewhere:2:gone"
    keys = [Twin(n).__af_key__ for n in range(3)]
    leases = [(keys[0], live, 1e12), (keys[1], live, 1e11), (keys[2], gone, 1.0)]
    conn.executemany("INSERT INTO leases VALUES (?, ?, ?)", leases)
    conn.execute("PRAGMA user_version=7")
    value, stats = await Plain().run_with_stats(cache_dir=cache_dir)
    assert (value, stats.reused) == (list(range(10)), 1)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [row[1] for row in conn.execute("PRAGMA table_info(leases)")] == ["key", "owner"]
    # The run that ended removed the expiry long past (its lease binds no one either way).
    assert conn.execute("SELECT * FROM owners").fetchall() == [(live, 1e12)]
    assert index.poll(conn, keys) == [True, True, False]
    with anyio.fail_after(10):
        assert await Twin(2).run(cache_dir=cache_dir) == 2  # the expired lease does not hold it up
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


@pytest.mark.parametrize(("column", "schema"), [("digest", 3), ("awaited", 4)])
async def test_an_older_index_gains_a_column_and_keeps_its_records(
    cache_dir: Path, column: str, schema: int
) -> None:
    await Plain().run(cache_dir=cache_dir)
    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    conn.execute(f"ALTER TABLE nodes DROP COLUMN {column}")  # as that schema had it
    conn.execute(f"PRAGMA user_version={schema}")
    conn.commit()
    value, stats = await Plain().run_with_stats(cache_dir=cache_dir)
    assert (value, stats.reused) == (list(range(10)), 1)  # without a digest: read unchecked
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute(f"SELECT {column} FROM nodes").fetchall() == [(None,)]
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


class Many(Task):
    """Gathers `Plain`-like leaves: many quick results for the writer."""

    leaves: RequiresList[int]

    def build_task(self, n: int, tag: str) -> None:
        self.leaves = [Numbered(i, tag) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.leaves)


class Numbered(Task):
    def build_task(self, i: int, tag: str) -> None:
        self.i = i

    async def run_task(self) -> int:
        return self.i


async def test_quick_bodies_wait_for_the_writer(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Results queue for the writer's thread; past a bound, bodies wait for it instead of
    # piling up results in memory (a million quick bodies outpace it). Every result is kept.
    from asyncflow._cache import session

    monkeypatch.setattr(session, "_BACKLOG_MAX", 8)
    most = 0
    store = session.CacheSession.store_nowait

    def counting(self: session.CacheSession, entry: session.Entry) -> None:
        nonlocal most
        store(self, entry)
        most = max(most, len(self._pending))  # pyright: ignore[reportPrivateUsage]  # what is bounded

    monkeypatch.setattr(session.CacheSession, "store_nowait", counting)
    tag = str(cache_dir)
    with anyio.fail_after(60):
        assert await Many(300, tag).run(cache_dir=cache_dir) == sum(range(300))
    assert 8 <= most <= 8 + 4  # a few busy workers may each add one before they wait
    _, stats = await Many(300, tag).run_with_stats(cache_dir=cache_dir)
    assert (stats.run, stats.reused) == (0, 301)  # every result was written


# A full disk (a real one: a 1 MiB tmpfs).

RUNS: Counter[str] = Counter()  # body executions in this process, by node key


class Bulky(Task):
    """100 KiB that gzip cannot shrink: a result file of its own."""

    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> bytes:
        RUNS[self.__af_key__] += 1
        return random.Random(self.i).randbytes(100 * 1024)


class Tally(Task):
    parts: RequiresList[bytes]

    def build_task(self, n: int) -> None:
        self.parts = [Bulky(i) for i in range(n)]

    async def run_task(self) -> int:
        RUNS[self.__af_key__] += 1
        return sum(len(p) for p in self.parts)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


async def test_a_full_disk_loses_only_what_did_not_fit(small_disk: Path) -> None:
    """The error names what was lost; nothing is left half-written or leased; the next run redoes it."""
    cache_dir = small_disk / "cache"
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * 512 * 1024)  # room for about 4 of the 8 results
    n = 8
    RUNS.clear()
    with anyio.fail_after(30), pytest.raises(CacheError) as caught:
        await Tally(n).run(cache_dir=cache_dir)
    error = caught.value
    message = str(error)
    assert message.startswith(
        f"could not write the results of {len(error.lost)} task(s) to the cache in {cache_dir}"
    )
    assert "No space left on device" in message or "disk is full" in message
    assert "free space" in message
    assert "will run again next time" in message
    assert error.lost
    assert set(error.lost) <= {t.__af_key__ for t in [*(Bulky(i) for i in range(n)), Tally(n)]}
    assert error.lost[0] in message
    assert isinstance(error.__cause__, (OSError, sqlite3.Error))
    # No partial file is left behind.
    assert not list((cache_dir / "asyncflow" / "tmp").iterdir())

    # Space freed, the same process runs again at once (its own leases do not hold it up
    # for their 15 s): it computes what was lost and reuses what was written.
    filler.unlink()
    RUNS.clear()
    with anyio.fail_after(5):
        value, stats = await Tally(n).run_with_stats(cache_dir=cache_dir)
    assert value == n * 100 * 1024
    assert set(RUNS) == set(error.lost) | {Tally(n).__af_key__}
    assert stats.reused == n + 1 - len(RUNS) > 0
    _, stats = await Tally(n).run_with_stats(cache_dir=cache_dir)
    assert (stats.run, stats.reused) == (0, n + 1)


async def test_a_disk_full_before_the_run_starts_is_a_cache_error(small_disk: Path) -> None:
    """Opening the index fails (SQLite cannot make its shared-memory file): a CacheError saying what to do."""
    cache_dir = small_disk / "cache"
    await Twin(1).run(cache_dir=cache_dir)
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):  # every last block
        while True:
            f.write(b"x" * 4096)
    with anyio.fail_after(30), pytest.raises(CacheError, match="free space") as caught:
        await Tally(2).run(cache_dir=cache_dir)
    assert isinstance(caught.value.__cause__, (OSError, sqlite3.Error))
    filler.unlink()
    assert await Tally(2).run(cache_dir=cache_dir) == 2 * 100 * 1024


async def test_a_lease_left_by_an_ended_run_of_this_process_binds_no_one(cache_dir: Path) -> None:
    """As when a full disk kept a run from deleting its leases: the next run does not wait for them."""
    await Twin(0).run(cache_dir=cache_dir)
    from asyncflow._cache.index import HOST

    conn = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    with conn:
        conn.execute("DELETE FROM nodes")
        owner = f"{HOST}:{os.getpid()}:0ended0"
        conn.execute("INSERT INTO leases VALUES (?, ?)", (Twin(0).__af_key__, owner))
        conn.execute("INSERT INTO owners VALUES (?, 1e12)", (owner,))
    conn.close()
    with anyio.fail_after(5):
        _, stats = await Twin(0).run_with_stats(cache_dir=cache_dir)
    assert stats.run == 1


def test_acquire_takes_the_free_and_the_dead_leases_and_names_live_holders(cache_dir: Path) -> None:
    conn = index.connect(cache_dir, create=True)
    assert conn is not None
    live, dead = "elsewhere:1:live", "elsewhere:2:dead"
    conn.executemany("INSERT INTO owners VALUES (?, ?)", [(live, 1e12), (dead, 1.0)])
    conn.executemany(
        "INSERT INTO leases VALUES (?, ?)", [("A()", live), ("B()", dead), ("C()", "nowhere:3:x")]
    )
    me = index.new_owner()
    try:
        got = index.acquire(conn, me, 15.0, ["A()", "B()", "C()", "D()"])
        assert [holder for holder, _ in got] == [live, None, None, None]
        assert dict(conn.execute("SELECT key, owner FROM leases")) == {
            "A()": live,
            "B()": me,
            "C()": me,
            "D()": me,
        }
        # All free: the quick way in, with the same outcome.
        assert index.acquire(conn, me, 15.0, ["E()", "F()"]) == [(None, None), (None, None)]
        assert index.poll(conn, ["A()", "B()", "E()", "G()"]) == [True, True, True, False]
    finally:
        index.end_owner(me)
        conn.close()


# Loading a result runs code: nothing in the cache is writable by others, whatever the umask.


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def in_a_task_directory(relative: Path) -> bool:
    """Tell whether a path under a cache directory is a task directory or in one."""
    return relative.parts[1:2] == ("data",) and len(relative.parts) > 3


class Peek(Task):
    """Uses its task directory, and looks at the index's files while the run has them open."""

    def run_task(self) -> dict[str, int]:
        root = self.task_directory.parents[2]  # <cache_dir>/asyncflow/data/<class>/<node>
        return {p.name: mode(p) for p in root.glob("index.sqlite*")}


class Everything(Task):
    big: Requires[bytes]  # a result file
    job: Requires[dict[str, object]]  # a body in a worker process, through a job prefix
    peek: Requires[dict[str, int]]  # small: inline in the index

    def build_task(self) -> None:
        self.big = Bulky(0)
        self.job = Where(0)
        self.peek = Peek()

    async def run_task(self) -> dict[str, int]:
        return self.peek


async def test_no_cache_file_is_writable_by_others_whatever_the_umask(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: list[dict[str, int]] = []
    read_answer = payload.read_answer

    def look_then_read(job: Path) -> payload.Answer | None:
        # What the worker left for the parent, before the parent reads and removes it.
        jobs.append(
            {"jobs/": mode(job.parent), "jobs/<id>/": mode(job)} | {p.name: mode(p) for p in job.iterdir()}
        )
        return read_answer(job)

    monkeypatch.setattr(payload, "read_answer", look_then_read)
    umask = os.umask(0)
    try:
        with anyio.fail_after(60):
            index_files = await Everything().run(cache_dir=cache_dir)
    finally:
        os.umask(umask)

    assert index_files == {"index.sqlite": 0o644, "index.sqlite-wal": 0o644, "index.sqlite-shm": 0o644}
    # Job payloads and answers: the owner's only.
    assert jobs == [
        {
            "jobs/": 0o700,
            "jobs/<id>/": 0o700,
            payload.SYS_PATH: 0o600,
            payload.PAYLOAD: 0o600,
            payload.RESULT: 0o600,
        }
    ]
    # Everything asyncflow made, the cache directory included, is writable by its owner only;
    # task directories (data/<class>/<node>/) are the user's, made with the user's umask.
    found = await anyio.to_thread.run_sync(lambda: [cache_dir, *cache_dir.rglob("*")])
    made = [p for p in found if not in_a_task_directory(p.relative_to(cache_dir))]
    assert {p.relative_to(cache_dir).parts[:2] for p in made} >= {
        ("asyncflow", "index.sqlite"),
        ("asyncflow", "results"),
        ("asyncflow", "tmp"),
        ("asyncflow", "jobs"),
        ("asyncflow", "data"),
    }
    assert [(str(p), oct(mode(p))) for p in made if mode(p) & 0o022] == []
    assert [p for p in made if p.is_file() and mode(p) != 0o644] == []
