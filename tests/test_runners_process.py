"""Plain ``def`` bodies in worker processes (``executor="process"``) and in a user's process pool.

Real worker processes throughout: what a body raises reaches the caller (as itself when
it pickles, else as its type, message and traceback), a worker that dies is named with
its exit status or signal, and a script without ``if __name__ == "__main__":`` is told
to add it. Scripts that must be ``__main__`` run in a subprocess of their own.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import anyio
import pytest

from asyncflow import AsyncflowError, RequiresList, Task, TaskFailedError, WorkflowFailedError
from asyncflow._mainguard import refuse_reimported_script, unguarded_main_call

if TYPE_CHECKING:
    from collections.abc import Iterator
    from concurrent.futures import Executor
    from pathlib import Path

SPAWN = multiprocessing.get_context("spawn")  # as fresh as a worker process gets


class TwoArgsError(Exception):
    """Its ``__init__`` cannot be called again with its args (what unpickling does)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}{b}")


class LockedError(Exception):
    """Holds a lock, which does not pickle."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class Raises(Task):
    def build_task(self, kind: str) -> None:
        self.kind = kind

    def run_task(self) -> int:
        if self.kind == "value":
            raise ValueError("plain")
        if self.kind == "two-args":
            raise TwoArgsError("a", "b")
        raise LockedError("locked")


class Square(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i * self.i


class Crash(Task):
    def build_task(self, how: str) -> None:
        self.how = how

    def run_task(self) -> int:
        if self.how == "exit":
            os._exit(3)
        if self.how == "segfault":
            ctypes.string_at(0)  # reads address 0: a real SIGSEGV
        os.kill(os.getpid(), getattr(signal, self.how))
        time.sleep(30)  # not reached: the signal ends the process
        return 0


class CrashAmong(Task):
    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [Crash("exit"), *(Square(i) for i in range(n))]

    def run_task(self) -> int:
        return sum(self.parts)


def line_of(script: str, start: str) -> int:
    """The number of the line of `script` that starts with `start` (after its indent)."""
    (number,) = [n for n, line in enumerate(script.splitlines(), 1) if line.strip().startswith(start)]
    return number


@pytest.fixture(params=["process", "pool"])
def executor(request: pytest.FixtureRequest) -> Iterator[str | Executor]:
    """``executor="process"``, or a process pool of the user's (spawn, one worker)."""
    if request.param == "process":
        yield "process"
        return
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        yield pool


# What a body raises.


async def test_an_exception_that_pickles_arrives_as_itself(cache_dir: Path, executor: str | Executor) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await Raises("value").run(cache_dir=cache_dir, executor=executor)
    assert str(info.value) == "Raises('value') failed: ValueError: plain"
    cause = info.value.__cause__
    assert type(cause) is ValueError  # `except ValueError` works
    where = str(cause.__cause__)  # where it was raised, in the worker
    assert where.startswith("ValueError was raised in the worker:\nTraceback (most recent call last):")
    assert f'File "{__file__}"' in where
    assert 'raise ValueError("plain")' in where


@pytest.mark.parametrize(
    ("kind", "name", "text", "why"),
    [
        (
            "two-args",
            "TwoArgsError",
            "ab",
            "TypeError: TwoArgsError.__init__() missing 1 required positional argument: 'b'",
        ),
        ("locked", "LockedError", "locked", "TypeError: cannot pickle '_thread.lock' object"),
    ],
)
async def test_an_exception_that_cannot_come_back_arrives_as_text(
    cache_dir: Path, executor: str | Executor, kind: str, name: str, text: str, why: str
) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await Raises(kind).run(cache_dir=cache_dir, executor=executor)
    first, second = str(info.value).splitlines()
    assert first == f"Raises({kind!r}) failed: {name}: {text}"
    assert second == f"  the {name} itself could not come back ({why}), only its text and traceback"
    assert info.value.task == f"Raises({kind!r})"
    where = info.value.__cause__
    assert type(where).__name__ == "WorkerTracebackError"
    assert str(where).startswith(f"{name} was raised in the worker:\n")
    assert f"raise {name}(" in str(where)
    assert str(where).endswith(f"{name}: {text}")


MAIN_ERROR_SCRIPT = """
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from asyncflow import Task, TaskFailedError


class MainError(Exception):  # defined in __main__: a worker cannot import it by name
    pass


class Body(Task):
    def run_task(self) -> int:
        raise MainError("boom")


if __name__ == "__main__":
    how = sys.argv[2]
    if how == "process":
        executor = "process"
    else:
        executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(how))
    try:
        Body().run_graph(cache_dir=sys.argv[1], executor=executor)
    except TaskFailedError as error:
        print("caught as itself:", isinstance(error.__cause__, MainError), flush=True)
        raise
"""


@pytest.mark.parametrize("how", ["process", "spawn", "fork"])
def test_an_exception_from_main_arrives(tmp_path: Path, how: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(MAIN_ERROR_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache"), how],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == "caught as itself: True\n"
    assert done.stderr.rstrip().endswith("asyncflow.TaskFailedError: Body() failed: MainError: boom"), (
        done.stderr
    )
    line = line_of(MAIN_ERROR_SCRIPT, 'raise MainError("boom")')
    assert "MainError was raised in the worker:" in done.stderr  # and where:
    assert f", line {line}, in run_task\nMainError: boom\n" in done.stderr


# A worker that dies.


@pytest.mark.parametrize(
    ("how", "said", "returncode"),
    [
        ("exit", "exit status 3", 3),
        ("segfault", "killed by SIGSEGV", -signal.SIGSEGV),
        ("SIGSEGV", "killed by SIGSEGV", -signal.SIGSEGV),
        ("SIGKILL", "killed by SIGKILL", -signal.SIGKILL),
    ],
)
async def test_a_dead_worker_is_named(
    cache_dir: Path, capfd: pytest.CaptureFixture[str], how: str, said: str, returncode: int
) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await Crash(how).run(cache_dir=cache_dir, executor="process")
    assert str(info.value).splitlines()[0] == f"Crash({how!r}) failed: its worker process died ({said})"
    assert info.value.task == f"Crash({how!r})"
    assert info.value.returncode == returncode
    if returncode == -signal.SIGSEGV:  # the worker's faulthandler says where
        assert "Fatal Python error: Segmentation fault" in capfd.readouterr().err
    with anyio.fail_after(60):  # the next run has workers again
        assert await Square(7).run(cache_dir=cache_dir, executor="process") == 49


async def test_a_dead_worker_is_replaced_within_the_run(cache_dir: Path) -> None:
    with anyio.fail_after(60), pytest.raises(WorkflowFailedError) as info:
        await CrashAmong(4).run(cache_dir=cache_dir, executor="process", max_workers=1, on_error="continue")
    assert [e.task for e in info.value.exceptions] == ["Crash('exit')"]
    _, stats = await Square(3).run_with_stats(cache_dir=cache_dir, executor="process")
    assert stats.reused == 1  # ran after the crash, in a new worker


async def test_a_dead_worker_breaks_a_process_pool(cache_dir: Path) -> None:
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
            await Crash("exit").run(cache_dir=cache_dir, executor=pool)
        first = str(info.value).splitlines()[0]
        assert first == (
            "Crash('exit') failed: its process pool is broken: one of its worker processes ended "
            "abruptly (a crash, os._exit(), a kill), and the pool runs nothing more; "
            "make a new ProcessPoolExecutor"
        )
        assert info.value.task == "Crash('exit')"
        assert isinstance(info.value.__cause__, BrokenProcessPool)
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool, anyio.fail_after(60):
        assert await Square(5).run(cache_dir=cache_dir, executor=pool) == 25


# A script without `if __name__ == "__main__":`.

UNGUARDED_SCRIPT = """
import asyncio
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from asyncflow import Task

print("top level", file=sys.stderr)


class Square(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i * self.i


how, call = sys.argv[2], sys.argv[3]
executor = "process" if how == "process" else ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(how))
if call == "run_graph":
    print(Square(3).run_graph(cache_dir=sys.argv[1], executor=executor))
else:
    print(asyncio.run(Square(3).run(cache_dir=sys.argv[1], executor=executor)))
"""


def run_unguarded(tmp_path: Path, how: str, call: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(UNGUARDED_SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache"), how, call],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("call", ["run_graph", "asyncio.run"])
def test_worker_processes_do_not_run_a_script_again(tmp_path: Path, call: str) -> None:
    done = run_unguarded(tmp_path, "process", call)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "9\n"
    assert done.stderr == "top level\n"  # the workers did not run it


@pytest.mark.parametrize("call", ["run_graph", "asyncio.run"])
@pytest.mark.parametrize("how", ["spawn", "forkserver"])
def test_a_pool_that_imports_a_script_without_the_guard(tmp_path: Path, how: str, call: str) -> None:
    done = run_unguarded(tmp_path, how, call)
    assert done.returncode == 1, done.stderr
    script = tmp_path / "script.py"
    line = line_of(UNGUARDED_SCRIPT, "print(Square(3)" if call == "run_graph" else "print(asyncio.run(")
    guard = '`if __name__ == "__main__":`'
    # The worker, importing the script, refuses to start the workflow again...
    assert (
        f"asyncflow.AsyncflowError: {script}, line {line}, starts a workflow while a worker "
        f"process imports the script: put the call under {guard}\n"
    ) in done.stderr
    # ...and the parent's failure says the same.
    lines = done.stderr.splitlines()
    (at,) = [n for n, text in enumerate(lines) if text.startswith("asyncflow.TaskFailedError: ")]
    assert lines[at].startswith("asyncflow.TaskFailedError: Square(3) failed: its process pool is broken:")
    assert lines[at + 1] == (
        f"  {script}, line {line}, starts the workflow outside {guard}; a pool started by spawn "
        "or forkserver imports the script in each worker, which starts it again: put the call "
        f"under {guard}"
    )


def test_the_guard_is_found_by_line(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            found = [check()]
            if __name__ == "__main__":
                found.append(check())
            if "__main__" == __name__:
                found.append(check())
            """
        )
    )
    namespace = {"__name__": "__main__", "check": unguarded_main_call}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    assert namespace["found"] == [(str(script), 2), None, None]


def test_a_run_from_a_reimported_script_is_refused() -> None:
    namespace = {"__name__": "__mp_main__", "refuse": refuse_reimported_script}
    with pytest.raises(AsyncflowError) as info:
        exec(compile("\n\nrefuse()\n", "/somewhere/script.py", "exec"), namespace)
    assert str(info.value).splitlines()[0] == (
        "/somewhere/script.py, line 3, starts a workflow while a worker process imports the "
        'script: put the call under `if __name__ == "__main__":`'
    )
    exec(compile("refuse()\n", "/somewhere/script.py", "exec"), {**namespace, "__name__": "__main__"})
