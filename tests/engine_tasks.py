"""Task classes and checks shared by the Dask and Ray runners' tests (test_runners_dask/ray.py).

This module is not installed, so its classes travel to the engines' workers by value,
as a user's project's would.
"""

from __future__ import annotations

import os
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from asyncflow import Requires, RequiresList, Task, TaskFailedError
from asyncflow._cache.store import attempts, history, read_log
from asyncflow._runners.payload import THRESHOLD
from asyncflow._taskfile import load_taskfile as load_as_the_cli_does
from tests.test_cli import cli
from tests.workflows import load_taskfile

if TYPE_CHECKING:
    from collections.abc import Callable

    from asyncflow._placements import Engine


class Square(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i * self.i


class SquareAsync(Task, channel="engine"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await anyio.lowlevel.checkpoint()
        return self.i * self.i


class Sum(Task):
    parts: RequiresList[int]

    def build_task(self, n: int, on_loop: bool = False) -> None:
        self.parts = [SquareAsync(i) if on_loop else Square(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)


class Fails(Task):
    def run_task(self) -> int:
        print("about to fail")
        raise ValueError("no good")


class Sleeper(Task):
    """Marks its start and end in `folder`; sleeps `seconds` between."""

    def build_task(self, i: int, folder: str, seconds: float) -> None:
        self.i = i
        self.folder = folder
        self.seconds = seconds

    def run_task(self) -> int:
        Path(self.folder, f"start-{self.i}").write_text(
            f"{time.monotonic()} {os.getpid()} {engine_task_name()}"
        )
        time.sleep(self.seconds)
        Path(self.folder, f"end-{self.i}").write_text(f"{time.monotonic()}")
        return self.i


class Sleepers(Task):
    parts: RequiresList[int]

    def build_task(self, n: int, folder: str, seconds: float) -> None:
        self.parts = [Sleeper(i, folder, seconds) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)


def engine_task_name() -> str:
    """The name of the engine's task that runs this body, as the engine knows it."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_task_name())
    import distributed

    return str(distributed.get_worker().get_current_task())


def names(folder: Path) -> set[str]:
    """The engine's names of the sleepers that started in `folder`."""
    return {p.read_text().split(" ", 2)[2] for p in folder.glob("start-*")}


async def check_results_and_cached_rerun(cache_dir: Path, executor: Any) -> None:
    """Right results through `executor`, and a rerun that runs nothing."""
    with anyio.fail_after(120):
        value, stats = await Sum(6).run_with_stats(cache_dir=cache_dir, executor=executor)
        assert value == sum(i * i for i in range(6))
        assert stats.run == 7  # the squares and the sum
        value, stats = await Sum(6).run_with_stats(cache_dir=cache_dir, executor=executor)
    assert value == sum(i * i for i in range(6))
    assert stats.run == 0


async def check_per_channel(cache_dir: Path, engine: Engine) -> None:
    """A placement per channel, for async bodies too (they get a loop on the worker)."""
    with anyio.fail_after(120):
        assert await Sum(4, on_loop=True).run(cache_dir=cache_dir, prefixes={"engine": engine}) == 14
        assert await SquareAsync(5).run(cache_dir=cache_dir / "b", hosts={"engine": engine}) == 25


async def check_failure_named(cache_dir: Path, engine: Engine) -> None:
    """A failing body is named, with its exception and the worker's traceback."""
    with anyio.fail_after(120), pytest.raises(TaskFailedError) as info:
        await Fails().run(cache_dir=cache_dir, executor=engine)
    assert str(info.value).splitlines()[0] == "Fails() failed: ValueError: no good"
    assert info.value.task == "Fails()"
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    assert "in run_task\n" in str(cause.__cause__), str(cause.__cause__)  # the worker's traceback


async def check_max_workers(cache_dir: Path, tmp_path: Path, engine: Engine) -> None:
    """At most max_workers bodies at once, measured by the bodies' own timestamps."""
    with anyio.fail_after(120):
        await Sleepers(3, str(tmp_path), 0.5).run(cache_dir=cache_dir, executor=engine, max_workers=1)
    events = timeline(tmp_path)
    assert len(events) == 6
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 1


TASKFILE = """
from asyncflow import Task

class FromFile(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> str:
        return f"{type(self).__module__} {self.i}"
"""


async def check_taskfile_travels(cache_dir: Path, tmp_path: Path, engine: Engine) -> None:
    """A class from a file imported by path (not importable by name) reaches the engine's workers."""
    module = load_taskfile(tmp_path / "engine_taskfile.py", TASKFILE)
    with anyio.fail_after(120):
        assert await module.FromFile(2).run(cache_dir=cache_dir, executor=engine) == f"{module.__name__} 2"


TALKING = """
import sys

from asyncflow import Task


class Talks(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        print(f"talks {self.i} on stdout", flush=True)
        print(f"talks {self.i} on stderr", file=sys.stderr, flush=True)
        return self.i


class Breaks(Task):
    def run_task(self) -> int:
        print("about to break", flush=True)
        raise ValueError("broken here")
"""


async def check_history(cache_dir: Path, tmp_path: Path, engine: Engine, place: str, job: str) -> None:
    """Bodies run by `engine` are in the run history: where they ran, under which job, what they printed.

    Args:
        cache_dir: the run's cache directory.
        tmp_path: where the taskfile goes (the command line reads the history through it).
        engine: the placement under test.
        place: the engine and its address, as each attempt's place starts.
        job: a pattern of the engine's name for the job that ran the body, after the place.
    """
    # A name of its own, so this process names its module as `asyncflow logs` will: the
    # same keys (a name already taken here would be given a hashed one).
    flow = tmp_path / ("talking_" + re.sub(r"\W", "_", tmp_path.name) + ".py")
    flow.write_text(TALKING)
    path = list(sys.path)
    try:
        module = load_as_the_cli_does(str(flow))
    finally:
        sys.path[:] = path  # the loader puts the file's folder first, as `python FILE` would
    with anyio.fail_after(120):
        assert await module.Talks(3).run(cache_dir=cache_dir, executor=engine) == 3
        with pytest.raises(TaskFailedError):
            await module.Breaks().run(cache_dir=cache_dir, executor=engine)
    runs = await history(cache_dir, 2)
    assert runs is not None
    assert [r.outcome for r in runs] == ["failed", "ok"]  # the latest first
    where = re.compile(rf"{re.escape(place)} \({job}\)")
    (talked,) = await attempts(cache_dir, runs[1].id)
    assert (talked.key, talked.outcome, talked.error) == (module.Talks(3).__af_key__, "ok", None)
    assert where.fullmatch(talked.place), talked.place
    assert sorted(read_log(cache_dir, talked).splitlines()) == ["talks 3 on stderr", "talks 3 on stdout"]
    (broke,) = await attempts(cache_dir, runs[0].id)
    assert (broke.outcome, broke.error) == ("failed", "Breaks() failed: ValueError: broken here")
    assert where.fullmatch(broke.place), broke.place
    told = read_log(cache_dir, broke)
    assert told.startswith("about to break\n"), told
    assert "ValueError: broken here" in told  # and the worker's traceback
    # The command line shows the same.
    shown = await anyio.to_thread.run_sync(
        partial(cli, "logs", flow, "Talks(3)", "--cache-dir", cache_dir, cwd=tmp_path)
    )
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    assert re.search(rf" on {where.pattern}: ok$", header), header
    assert sorted(lines) == ["talks 3 on stderr", "talks 3 on stdout"]


async def cancel_while_sleeping(
    cache_dir: Path, folder: Path, engine: Engine, n: int, seconds: float, while_running: Callable[[], None]
) -> None:
    """Run `n` sleepers (more than the engine's 2 slots), and cancel the run once 2 are running.

    `while_running` looks at the engine before the cancel.
    """
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                await Sleepers(n, str(folder), seconds).run(cache_dir=cache_dir, executor=engine)

            tg.start_soon(go)
            while started(folder) < 2:  # noqa: ASYNC110 - the engine's workers write them
                await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(while_running)
            tg.cancel_scope.cancel()


def started(folder: Path) -> int:
    return len(list(folder.glob("start-*")))


def ended(folder: Path) -> int:
    return len(list(folder.glob("end-*")))


def pids(folder: Path) -> set[int]:
    """The processes the sleepers that started in `folder` ran in."""
    return {int(p.read_text().split(" ", 2)[1]) for p in folder.glob("start-*")}


def running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # the state follows the command's name


def timeline(folder: Path) -> list[tuple[float, int]]:
    """The sleepers' starts (+1) and ends (-1) in `folder`, in time order."""
    starts = [(float(p.read_text().split()[0]), +1) for p in folder.glob("start-*")]
    return sorted(starts + [(float(p.read_text()), -1) for p in folder.glob("end-*")])


BIG = THRESHOLD + 1000


class BigValue(Task):
    def run_task(self) -> bytes:
        return b"v" * BIG


class ReadsBigValue(Task):
    big: Requires[bytes]

    def build_task(self, i: int, values: str) -> None:
        self.big = BigValue()
        self.i = i
        self.values = values

    def run_task(self) -> tuple[bool, list[str]]:
        return self.big == b"v" * BIG, sorted(p.name for p in Path(self.values).glob("values-*/*"))


class BigValueReaders(Task):
    parts: RequiresList[tuple[bool, list[str]]]

    def build_task(self, n: int, values: str) -> None:
        self.parts = [ReadsBigValue(i, values) for i in range(n)]

    async def run_task(self) -> list[tuple[bool, list[str]]]:
        return self.parts


async def check_big_values_by_file(cache_dir: Path, engine: Engine) -> None:
    """On workers of this machine, a big result comes back as a file, and its readers read that file."""
    values = str(cache_dir / "asyncflow" / "tmp")  # where the run keeps its big values
    with anyio.fail_after(120):
        parts = await BigValueReaders(2, values).run(cache_dir=cache_dir, executor=engine)
    for same, files in parts:
        assert same
        # The answer's file, which the readers' payloads named: nothing was written again.
        assert len(files) == 1
        assert files[0].startswith("answer-")
    assert os.listdir(values) == []  # removed when the run ended
