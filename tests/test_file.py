"""Input files: `File(path)` arguments make a node stale when the file's content changes."""

from __future__ import annotations

import dataclasses
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from asyncflow import File, InputFileError, RequiresList, Task
from asyncflow._explain import explain


class Size(Task):
    """The size of a file, or the number of files under a directory."""

    def build_task(self, data: File) -> None:
        self.data = data

    def run_task(self) -> int:
        path = self.data.path
        if path.is_dir():
            return sum(len(files) for _, _, files in os.walk(path))
        return len(path.read_bytes())


class Sizes(Task):
    parts: RequiresList[int]

    def build_task(self, inputs: dict[str, list[File]]) -> None:
        self.parts = [Size(f) for files in inputs.values() for f in files]

    async def run_task(self) -> list[int]:
        return self.parts


def _counts(task: Task[..., object], cache_dir: Path) -> tuple[object, int, int]:
    value, stats = task.run_graph_with_stats(cache_dir=cache_dir)
    return value, stats.run, stats.reused


def _age(path: Path, seconds: float = 5.0) -> None:
    """Date a file back, as if it had been written a while before being hashed."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_a_file_is_in_the_key_by_the_path_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = File("data/../data/a.csv")
    assert repr(data) == "File('data/a.csv')"
    assert data.path == tmp_path / "data" / "a.csv"  # absolute, resolved when made
    assert os.fspath(data) == str(tmp_path / "data" / "a.csv")
    assert repr(Size(data)) == "Size(File('data/a.csv'))"
    assert File("data/a.csv") == File(tmp_path / "data" / "a.csv")  # the same file...
    assert Size(data) != Size(File(tmp_path / "data" / "a.csv"))  # ...but keys keep the path as given
    assert pickle.loads(pickle.dumps(data)).path == data.path


def test_content_changes_make_a_node_stale_and_a_touch_does_not(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "a.csv"
    data.write_text("a,b\n")
    _age(data)
    assert _counts(Size(File(data)), cache_dir) == (4, 1, 0)
    assert _counts(Size(File(data)), cache_dir) == (4, 0, 1)
    os.utime(data)  # touched: a new mtime, the same content
    assert _counts(Size(File(data)), cache_dir) == (4, 0, 1)
    data.write_text("a,b\nc,d\n")
    assert _counts(Size(File(data)), cache_dir) == (8, 1, 0)


def test_a_change_in_the_same_second_as_the_hash_is_seen(tmp_path: Path, cache_dir: Path) -> None:
    # The same size and an mtime in the same tick: only the "racy" rule catches it.
    data = tmp_path / "a.txt"
    data.write_text("one")
    assert _counts(Size(File(data)), cache_dir) == (3, 1, 0)
    stat = data.stat()
    data.write_text("two")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the very stat it was hashed at
    assert _counts(Size(File(data)), cache_dir)[1] == 1  # hashed again: recomputed
    value, _, _ = _counts(Size(File(data)), cache_dir)
    assert value == 3


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "big.bin"
    data.write_bytes(b"x" * 1000)
    _age(data)
    _counts(Size(File(data)), cache_dir)
    index = sqlite3.connect(cache_dir / "asyncflow" / "index.sqlite")
    (hashed,) = index.execute("SELECT hashed_ns FROM files WHERE path=?", (str(data),)).fetchone()
    _counts(Size(File(data)), cache_dir)
    assert index.execute("SELECT hashed_ns FROM files WHERE path=?", (str(data),)).fetchone() == (hashed,)
    index.close()


def test_a_directory_tree_by_names_and_contents(tmp_path: Path, cache_dir: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    for path in (tree / "a.txt", tree / "sub" / "b.txt"):
        _age(path)
    assert _counts(Size(File(tree)), cache_dir) == (2, 1, 0)
    assert _counts(Size(File(tree)), cache_dir) == (2, 0, 1)
    (tree / "sub" / "b.txt").write_text("B")  # a content deep down
    assert _counts(Size(File(tree)), cache_dir) == (2, 1, 0)
    (tree / "sub" / "c.txt").write_text("c")  # a new file
    assert _counts(Size(File(tree)), cache_dir) == (3, 1, 0)
    (tree / "sub" / "c.txt").rename(tree / "sub" / "d.txt")  # a new name
    assert _counts(Size(File(tree)), cache_dir) == (3, 1, 0)
    (tree / "empty").mkdir()  # a new directory counts too
    assert _counts(Size(File(tree)), cache_dir)[1] == 1


def test_files_inside_lists_and_dicts(tmp_path: Path, cache_dir: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aa")
    b.write_text("bbb")
    task = Sizes({"first": [File(a)], "second": [File(b)]})
    assert _counts(task, cache_dir) == ([2, 3], 3, 0)
    b.write_text("bbbb")
    value, run, reused = _counts(Sizes({"first": [File(a)], "second": [File(b)]}), cache_dir)
    assert (value, run, reused) == ([2, 4], 2, 1)  # Size(b) and Sizes; Size(a) reused


async def test_a_missing_file_is_an_error_before_anything_runs(tmp_path: Path, cache_dir: Path) -> None:
    present = tmp_path / "present.txt"
    present.write_text("x")
    task = Sizes({"a": [File(present)], "b": [File(tmp_path / "gone.txt")]})
    with pytest.raises(InputFileError) as caught:
        await task.run(cache_dir=cache_dir)
    error = caught.value
    assert error.path == str(tmp_path / "gone.txt")
    assert error.task == repr(Size(File(tmp_path / "gone.txt")))
    assert str(error).startswith(f"{error.task}: its input File('{tmp_path / 'gone.txt'}') does not exist")
    _, stats = await Size(File(present)).run_with_stats(cache_dir=cache_dir)
    assert stats.run == 1  # nothing ran before: Size(present) was not computed then


async def test_explain_names_the_input_that_changed(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "a.csv"
    data.write_text("1")
    await Sizes({"x": [File(data)]}).run(cache_dir=cache_dir)
    data.write_text("12")
    statuses = {repr(s.task): s for s in await explain(Sizes({"x": [File(data)]}), cache_dir=cache_dir)}
    size = statuses[repr(Size(File(data)))]
    assert (size.state, size.reason) == ("stale", f"input changed: {os.path.relpath(data)}")  # noqa: ASYNC240 - a test


def test_a_fresh_process_sees_an_edit(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a\n")
    (tmp_path / "flow.py").write_text(
        textwrap.dedent(
            """
            from asyncflow import File, Requires, Task

            class Lines(Task):
                def build_task(self, data: File) -> None:
                    self.data = data

                def run_task(self) -> int:
                    return len(self.data.path.read_text().splitlines())

            class Main(Task):
                n: Requires[int]

                def build_task(self) -> None:
                    self.n = Lines(File("data.csv"))

                async def run_task(self) -> int:
                    return self.n
            """
        )
    )

    def run() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "asyncflow", "run", "flow.py", "-l", "WARNING"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.splitlines()[:2]

    assert run()[0] == "Main() = 1"
    assert run()[1].startswith("0 run, 2 from cache")
    (tmp_path / "data.csv").write_text("a\nb\nc\n")
    first, counts = run()
    assert (first, counts.split(" from")[0]) == ("Main() = 3", "2 run, 0")


async def test_a_body_in_another_process_reads_the_same_file(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "a.csv"
    data.write_text("abc")
    assert await Size(File(data)).run(cache_dir=cache_dir, executor="process") == 3


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    source: File


class Rows(Task):
    def build_task(self, data: Dataset) -> None:
        self.data = data

    def run_task(self) -> int:
        return len(self.data.source.path.read_text().splitlines())


def test_a_file_inside_a_dataclass_is_an_input(tmp_path: Path, cache_dir: Path) -> None:
    # Wherever the key holds a file, its content is an input (not only in lists and dicts).
    data = tmp_path / "rows.csv"
    data.write_text("a\n")
    _age(data)
    assert _counts(Rows(Dataset("rows", File(data))), cache_dir) == (1, 1, 0)
    data.write_text("a\nb\n")
    assert _counts(Rows(Dataset("rows", File(data))), cache_dir) == (2, 1, 0)


async def test_an_unreadable_input_is_an_error_and_a_bad_link_in_a_tree_is_not(
    tmp_path: Path, cache_dir: Path
) -> None:
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(InputFileError, match=r"cannot be read \(NotADirectoryError"):
        await Size(File(tmp_path / "a.txt" / "inside")).run(cache_dir=cache_dir)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text("ok")
    (tree / "loop").symlink_to(tree / "loop")  # stat fails (ELOOP): counted by name, no crash
    assert await Size(File(tree)).run(cache_dir=cache_dir) == 2
