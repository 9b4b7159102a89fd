"""Damaged caches: a result that cannot be read back is computed again, never a raw error or a wrong value."""

from __future__ import annotations

import importlib
import os
import random
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncflow import CacheError, CacheWarning, Const, Requires, RequiresList, Task, UnreadableResultError
from asyncflow._cache.check import check

RUNS: dict[str, int] = {}


def _ran(key: str) -> None:
    RUNS[key] = RUNS.get(key, 0) + 1


class MakePoint(Task, version="1"):  # version: its code is not hashed, as a library's would not be
    def build_task(self, module: str) -> None:
        self.module = module

    def run_task(self) -> Any:
        _ran(f"MakePoint({self.module})")
        return importlib.import_module(self.module).make()


class Coords(Task):
    point: Requires[Any]

    def build_task(self, module: str, tag: int) -> None:
        self.point = MakePoint(module)

    def run_task(self) -> tuple[int, int]:
        return (self.point.x, self.point.y)


class Noise(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    def run_task(self) -> bytes:
        _ran(f"Noise({self.n})")
        return random.Random(self.n).randbytes(self.n)  # incompressible: a result file of its own


class Length(Task):
    data: Requires[bytes]

    def build_task(self, n: int, tag: int) -> None:
        self.data = Noise(n)

    def run_task(self) -> int:
        return len(self.data)


class Word(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> str:
        _ran(f"Word({self.i})")
        return f"payload-{self.i}-" * 3  # small: inside the index


class Words(Task):
    words: RequiresList[str]

    def build_task(self, n: int, tag: int) -> None:
        self.words = [Word(i) for i in range(n)]

    def run_task(self) -> list[str]:
        return list(self.words)


def _index(cache_dir: Path) -> Path:
    return cache_dir / "asyncflow" / "index.sqlite"


def _result_file(cache_dir: Path, task: Task[Any, Any]) -> Path:
    conn = sqlite3.connect(_index(cache_dir))
    try:
        (name,) = conn.execute("SELECT path FROM nodes WHERE key=?", (task.__af_key__,)).fetchone()
    finally:
        conn.close()
    return cache_dir / "asyncflow" / "results" / name


async def test_a_result_whose_class_was_renamed_is_computed_again(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"shapes_{tmp_path.name.replace('-', '_')}"
    source = tmp_path / f"{module}.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    source.write_text(
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n"
        "def make():\n    return Point(1, 2)\n"
    )
    try:
        assert await Coords(module, 0).run(cache_dir=cache_dir) == (1, 2)
        # A refactor (or a library upgrade) renames the class the cached result is made of.
        source.write_text(
            "class Location:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n"
            "def make():\n    return Location(3, 4)\n"
        )
        del sys.modules[module]
        importlib.invalidate_caches()
        with pytest.warns(CacheWarning, match=rf"MakePoint\('{module}'\): .*does not unpickle here.*Point"):
            value, stats = await Coords(module, 1).run_with_stats(cache_dir=cache_dir)
        assert value == (3, 4)
        assert (stats[MakePoint.task_name].run, stats[MakePoint.task_name].reused) == (1, 0)
        # The damaged entry is gone for good: the next run reuses what this one made.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value, stats = await Coords(module, 2).run_with_stats(cache_dir=cache_dir)
        assert value == (3, 4)
        assert stats[MakePoint.task_name].reused == 1
    finally:
        sys.modules.pop(module, None)


@pytest.mark.parametrize("damage", ["truncate", "remove", "flip"])
async def test_a_damaged_result_file_is_computed_again(cache_dir: Path, damage: str) -> None:
    n = 200_000 + len(damage)
    expected = random.Random(n).randbytes(n)
    assert await Noise(n).run(cache_dir=cache_dir) == expected
    path = _result_file(cache_dir, Noise(n))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: n // 2])
    elif damage == "remove":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))
    reason = {"truncate": "damaged", "remove": "missing", "flip": "damaged"}[damage]
    key = f"Noise({n})"
    RUNS.pop(key, None)
    # The root itself, fresh: read at the end of the run.
    with pytest.warns(CacheWarning, match=rf"Noise\({n}\): its cached result cannot be read: .*{reason}"):
        assert await Noise(n).run(cache_dir=cache_dir) == expected
    assert RUNS[key] == 1
    # Damage it again, and read it as a dependent's input this time.
    if damage == "remove":
        _result_file(cache_dir, Noise(n)).unlink()
    else:
        _result_file(cache_dir, Noise(n)).write_bytes(b"garbage")
    with pytest.warns(CacheWarning, match=rf"Noise\({n}\)"):
        value, stats = await Length(n, 0).run_with_stats(cache_dir=cache_dir)
    assert value == n
    assert (stats[Noise.task_name].run, stats[Noise.task_name].reused) == (1, 0)
    assert RUNS[key] == 2


async def test_task_result_names_an_unreadable_result(cache_dir: Path) -> None:
    n = 100_000
    await Noise(n).run(cache_dir=cache_dir)
    _result_file(cache_dir, Noise(n)).unlink()
    with pytest.raises(
        UnreadableResultError, match=rf"Noise\({n}\) cannot be read: its result file .* is missing"
    ):
        await Noise(n).result(cache_dir=cache_dir)


def _flip_in_file(path: Path, marker: bytes) -> None:
    """Flip one bit in every copy of `marker` in the file at `path`."""
    data = bytearray(path.read_bytes())
    at = data.find(marker)
    assert at >= 0
    while at >= 0:
        data[at + len(marker) // 2] ^= 0x01
        at = data.find(marker, at + 1)
    path.write_bytes(bytes(data))


async def test_a_bit_flipped_in_an_inline_result_is_caught(cache_dir: Path) -> None:
    expected = [f"payload-{i}-" * 3 for i in range(5)]
    assert await Words(5, 0).run(cache_dir=cache_dir) == expected
    # The run closed the index: its write-ahead log is folded into the file.
    assert not (cache_dir / "asyncflow" / "index.sqlite-wal").exists()
    _flip_in_file(_index(cache_dir), b"payload-3-payload-3-")
    RUNS.clear()
    with pytest.warns(
        CacheWarning, match=r"Word\(3\): its cached result cannot be read: its record is damaged"
    ):
        assert await Words(5, 1).run(cache_dir=cache_dir) == expected
    assert RUNS == {"Word(3)": 1}


async def test_dependents_of_a_recomputed_node_read_its_new_result(cache_dir: Path) -> None:
    # Length(n, 0) and Length(n, 1) both read Noise(n): the one that finds it damaged makes
    # it run again, the other waits for it; neither sees garbage, it runs once.
    n = 150_000
    await Noise(n).run(cache_dir=cache_dir)
    _result_file(cache_dir, Noise(n)).write_bytes(b"\x1f\x8b garbage")
    RUNS.clear()

    class Both(Task):
        lengths: RequiresList[int]

        def build_task(self) -> None:
            self.lengths = [Length(n, 0), Length(n, 1)]

        async def run_task(self) -> list[int]:
            return list(self.lengths)

    with pytest.warns(CacheWarning):
        assert await Both().run(cache_dir=cache_dir) == [n, n]
    assert {f"Noise({n})": 1} == RUNS


class Lengths(Task):
    lengths: RequiresList[int]

    def build_task(self, n: int, count: int) -> None:
        self.lengths = [Length(n, tag) for tag in range(count)]

    async def run_task(self) -> list[int]:
        return list(self.lengths)


async def test_many_dependents_wait_for_a_node_computed_again(cache_dir: Path) -> None:
    # Some dependents find the damage; the others, started later, find the node not done.
    n = 110_000
    await Noise(n).run(cache_dir=cache_dir)
    _result_file(cache_dir, Noise(n)).unlink()
    RUNS.clear()
    with pytest.warns(CacheWarning):
        value, stats = await Lengths(n, 40).run_with_stats(cache_dir=cache_dir)
    assert value == [n] * 40
    assert {f"Noise({n})": 1} == RUNS
    assert (stats[Noise.task_name].run, stats[Noise.task_name].reused) == (1, 0)
    assert stats[Length.task_name].run == 40


class SlowNoise(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> bytes:
        _ran(f"SlowNoise({self.n})")
        await anyio.sleep(0.5)
        return random.Random(self.n).randbytes(self.n)


class Nap(Task):
    def build_task(self, tag: int) -> None:
        self.tag = tag

    async def run_task(self) -> int:
        await anyio.sleep(0.2)
        return 0


class LateLength(Task):
    data: Requires[bytes]
    nap: Requires[int]

    def build_task(self, n: int, tag: int, nap: bool) -> None:
        self.data = SlowNoise(n)
        self.nap = Nap(tag) if nap else Const(0)

    def run_task(self) -> int:
        return len(self.data) + self.nap


class EarlyAndLate(Task):
    early: Requires[int]
    late: Requires[int]

    def build_task(self, n: int, tag: int) -> None:
        self.early = LateLength(n, tag, False)  # reads SlowNoise at once: finds it damaged
        self.late = LateLength(n, tag, True)  # reads it 0.2 s later, while it runs again

    def run_task(self) -> list[int]:
        return [self.early, self.late]


async def test_a_dependent_ready_while_its_dep_runs_again_waits_for_it(cache_dir: Path) -> None:
    n = 90_000
    await EarlyAndLate(n, 0).run(cache_dir=cache_dir)
    _result_file(cache_dir, SlowNoise(n)).unlink()
    RUNS.clear()
    with pytest.warns(CacheWarning), anyio.fail_after(10):
        assert await EarlyAndLate(n, 1).run(cache_dir=cache_dir) == [n, n]
    assert {f"SlowNoise({n})": 1} == RUNS


async def test_a_malformed_index_is_a_cache_error_saying_what_to_do(cache_dir: Path) -> None:
    await Words(200, 0).run(cache_dir=cache_dir)
    path = _index(cache_dir)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[page : 3 * page] = bytes(range(256)) * (2 * page // 256)  # two B-tree pages of garbage
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError) as caught:
        await Words(200, 1).run(cache_dir=cache_dir)
    message = str(caught.value)
    assert str(path) in message
    assert "asyncflow check --repair" in message
    causes: list[BaseException] = []
    cause: BaseException | None = caught.value
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    assert any(type(c) is sqlite3.DatabaseError for c in causes)


def test_a_damaged_key_never_gives_another_nodes_result(cache_dir: Path) -> None:
    """A bit flipped in a key (Word(219) -> Word(259)) makes a record answer for another node: refused."""
    assert Words(300, 0).run_graph(cache_dir=cache_dir)[259] == "payload-259-" * 3
    conn = sqlite3.connect(_index(cache_dir))
    real, flipped = Word(219).__af_key__, Word(259).__af_key__
    with conn:
        conn.execute("DELETE FROM nodes WHERE key=?", (flipped,))
        conn.execute("UPDATE nodes SET key=? WHERE key=?", (flipped, real))  # task_name, args unchanged
    conn.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = Words(300, 1).run_graph(cache_dir=cache_dir)
    assert value[259] == "payload-259-" * 3
    assert value[219] == "payload-219-" * 3
    assert any("its key does not match its task and arguments" in str(w.message) for w in caught)
    assert _check(cache_dir).returncode == 0  # the bad record was replaced by the new result


def test_random_bit_flips_never_give_a_wrong_value(tmp_path: Path) -> None:
    # The fault-injection pass of issue 12 found 3 wrong values in 40 flips of one random bit
    # each; now every flip ends in the right values (a damaged entry computed again) or a
    # CacheError about the index.
    rng = random.Random(12)
    n = 300
    expected = [f"payload-{i}-" * 3 for i in range(n)]
    outcomes: dict[str, int] = {}
    for trial in range(40):
        cache_dir = tmp_path / f"cache{trial}"
        assert Words(n, 0).run_graph(cache_dir=cache_dir) == expected
        path = _index(cache_dir)
        data = bytearray(path.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = Words(n, 1).run_graph(cache_dir=cache_dir)
            except CacheError as exc:
                error = str(exc)
            else:
                error = None
        if error is not None:  # the index itself is damaged: check --repair makes it usable
            assert "the cache index" in error
            assert "asyncflow check --repair" in error
            outcomes["cache error"] = outcomes.get("cache error", 0) + 1
            report = check(cache_dir, repair=True)
            assert report is not None
            assert not report.clean
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                value = Words(n, 1).run_graph(cache_dir=cache_dir)
            assert value == expected, f"a wrong value after repairing a bit flipped at byte {at}"
            continue
        assert value == expected, f"a wrong value after flipping a bit at byte {at}"
        assert all(issubclass(w.category, CacheWarning) for w in caught), [str(w.message) for w in caught]
        kind = "recomputed" if caught else "unaffected"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert sum(outcomes.values()) == 40
    assert outcomes.get("recomputed", 0) > 0  # the seed flips bits in results, not only elsewhere


def _check(cache_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncflow", "check", "--cache-dir", str(cache_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_finds_damaged_results_and_repair_removes_them(cache_dir: Path) -> None:
    n = 120_000
    Words(5, 0).run_graph(cache_dir=cache_dir)
    Noise(n).run_graph(cache_dir=cache_dir)
    clean = _check(cache_dir)
    assert clean.returncode == 0, clean.stderr
    assert "index: ok" in clean.stdout
    assert "7 checked against their digests, 0 damaged" in clean.stdout
    _result_file(cache_dir, Noise(n)).write_bytes(b"truncated")
    _flip_in_file(_index(cache_dir), b"payload-2-payload-2-")  # Word(2), and Words(5, 0) holding it
    stray = cache_dir / "asyncflow" / "results" / "ff" / "ff00"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"no record names me")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    leftover = cache_dir / "asyncflow" / "tmp" / "ab12.999999999.tmp"  # its writer is gone
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a result")

    found = _check(cache_dir)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "3 damaged" in found.stdout
    assert f"Noise({n}): its result file" in found.stdout
    assert "Word(2): its record is damaged" in found.stdout
    assert "result files no record names: 1" in found.stdout
    assert "temporary files left by writers that died: 1" in found.stdout
    assert "asyncflow check --repair" in found.stdout

    repaired = _check(cache_dir, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "removed 3 damaged result(s)" in repaired.stdout
    assert not stray.exists()
    assert not leftover.exists()
    assert "0 damaged" in _check(cache_dir).stdout
    RUNS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing damaged is left to find
        assert Words(5, 0).run_graph(cache_dir=cache_dir) == [f"payload-{i}-" * 3 for i in range(5)]
        assert Noise(n).run_graph(cache_dir=cache_dir) == random.Random(n).randbytes(n)
    assert {"Word(2)": 1, f"Noise({n})": 1} == RUNS


def test_check_repair_rebuilds_a_malformed_index_from_what_it_can_read(cache_dir: Path) -> None:
    n = 400
    expected = [f"payload-{i}-" * 3 for i in range(n)]
    Words(n, 0).run_graph(cache_dir=cache_dir)
    path = _index(cache_dir)
    conn = sqlite3.connect(path)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    leaves = [n for (n,) in conn.execute("SELECT pageno FROM dbstat WHERE name='nodes' AND pagetype='leaf'")]
    conn.close()
    data = bytearray(path.read_bytes())
    middle = (leaves[len(leaves) // 2] - 1) * page  # a leaf of the nodes table (pages count from 1)
    data[middle : middle + page] = bytes(page)
    path.write_bytes(bytes(data))

    found = _check(cache_dir)
    assert found.returncode == 1
    assert "index: DAMAGED" in found.stdout
    repaired = _check(cache_dir, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "rebuilt the index" in repaired.stdout
    assert list(path.parent.glob("index.sqlite.damaged-*"))
    after = _check(cache_dir)
    assert after.returncode == 0, after.stdout
    assert "index: ok" in after.stdout
    RUNS.clear()
    value, stats = Words(n, 0).run_graph_with_stats(cache_dir=cache_dir)
    assert value == expected
    # The page lost some records (they run again); the rest were kept.
    assert 0 < stats[Word.task_name].run < n
    assert stats[Word.task_name].reused == n - stats[Word.task_name].run


def test_a_flipped_schema_number_is_damage_not_a_newer_asyncflow(cache_dir: Path) -> None:
    expected = [f"payload-{i}-" * 3 for i in range(5)]
    Words(5, 0).run_graph(cache_dir=cache_dir)
    conn = sqlite3.connect(_index(cache_dir))
    conn.execute(f"PRAGMA user_version={4 | 1 << 18}")  # one bit of the header flipped
    conn.close()
    with pytest.raises(CacheError, match=r"is damaged .*asyncflow check --repair"):
        Words(5, 0).run_graph(cache_dir=cache_dir)
    assert _check(cache_dir, "--repair").returncode == 0
    value, stats = Words(5, 0).run_graph_with_stats(cache_dir=cache_dir)
    assert value == expected
    assert (stats.run, stats.reused) == (0, 6)
