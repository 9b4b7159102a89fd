"""What each attempt of a body printed and logged: kept apart per body, for every place a body runs."""

from __future__ import annotations

import logging
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from asyncflow import RequiresList, Task, TaskFailedError
from asyncflow._cache.store import attempts_of_node, read_log
from asyncflow._capture import LIMIT

from .test_cli import _env, cli

log = logging.getLogger("tests.talker")


class Talker(Task):
    """An async body on the loop: its lines interleave with the others' at every sleep."""

    def build_task(self, name: str) -> None:
        self.name = name

    async def run_task(self) -> str:
        for i in range(5):
            print(f"{self.name} out {i}")
            print(f"{self.name} err {i}", file=sys.stderr)
            log.warning("%s logged %d", self.name, i)
            await anyio.sleep(0.01)
        return self.name


class ThreadTalker(Task):
    """A plain def body: in a worker thread (or a worker process, or a job)."""

    def build_task(self, name: str) -> None:
        self.name = name

    def run_task(self) -> str:
        for i in range(5):
            print(f"{self.name} out {i}", flush=True)
            print(f"{self.name} err {i}", file=sys.stderr, flush=True)
            log.warning("%s logged %d", self.name, i)
            time.sleep(0.01)
        return self.name


class Chorus(Task):
    voices: RequiresList[str]

    def build_task(self) -> None:
        self.voices = [Talker("a"), Talker("b"), ThreadTalker("c"), ThreadTalker("d")]

    async def run_task(self) -> list[str]:
        return self.voices


class Loud(Task):
    async def run_task(self) -> int:
        print("x" * (LIMIT + 1000), end="")
        print("the end")
        return 1


class Broken(Task):
    async def run_task(self) -> int:
        print("about to break")
        raise RuntimeError("broken for good")


async def _output(cache_dir: Path, task: Task[Any, Any]) -> str:
    (attempt,) = await attempts_of_node(cache_dir, task.__af_key__, 1)
    return read_log(cache_dir, attempt)


def _lines_of(name: str) -> list[str]:
    return [
        line
        for i in range(5)
        for line in (f"{name} out {i}", f"{name} err {i}", f"WARNING tests.talker: {name} logged {i}")
    ]


async def test_concurrent_bodies_keep_their_own_output(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await Chorus().run(cache_dir=cache_dir) == ["a", "b", "c", "d"]
    for task, name in (
        (Talker("a"), "a"),
        (Talker("b"), "b"),
        (ThreadTalker("c"), "c"),
        (ThreadTalker("d"), "d"),
    ):
        lines = (await _output(cache_dir, task)).splitlines()
        assert sorted(lines) == sorted(_lines_of(name))  # all of its own, nobody else's
        assert [line for line in lines if " out " in line] == [
            f"{name} out {i}" for i in range(5)
        ]  # in order
    shown = capsys.readouterr()
    assert "a out 0" in shown.out  # the terminal still shows it all
    assert "c err 4" in shown.err


@pytest.mark.parametrize(
    "options",
    [{"executor": "process"}, {"prefixes": {ThreadTalker.task_name: ["env", "A=1"]}}],
    ids=["process", "job-prefix"],
)
async def test_bodies_in_other_processes_send_their_output_back(
    cache_dir: Path, options: dict[str, Any]
) -> None:
    name = "process" if "executor" in options else "job"
    task = ThreadTalker(name)
    await task.run(cache_dir=cache_dir, **options)
    lines = (await _output(cache_dir, task)).splitlines()
    assert [line for line in lines if " out " in line] == [f"{name} out {i}" for i in range(5)]
    assert [line for line in lines if " err " in line] == [f"{name} err {i}" for i in range(5)]


async def test_a_failed_attempt_keeps_its_output_and_traceback(cache_dir: Path) -> None:
    with pytest.raises(TaskFailedError):
        await Broken().run(cache_dir=cache_dir)
    text = await _output(cache_dir, Broken())
    assert text.startswith("about to break\nTraceback (most recent call last):")
    assert text.rstrip().endswith("RuntimeError: broken for good")


async def test_an_attempt_keeps_the_tail_of_a_long_output(cache_dir: Path) -> None:
    await Loud().run(cache_dir=cache_dir)
    text = await _output(cache_dir, Loud())
    assert text.startswith("[asyncflow: 1008 characters before these were dropped]\n")
    assert text.endswith("x" * 100 + "the end\n")
    assert len(text) < LIMIT + 100


async def test_nothing_printed_makes_no_file(cache_dir: Path) -> None:
    await Chorus().run(cache_dir=cache_dir)
    (attempt,) = await attempts_of_node(cache_dir, Chorus().__af_key__, 1)
    assert attempt.log is None


FLOW = """
from asyncflow import RequiresList, Task


class Part(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> object:
        print(f"part {self.i} speaking")
        return self.i if self.i < 2 else "y" * 300


class Main(Task):
    parts: RequiresList[int]

    def build_task(self) -> None:
        self.parts = [Part(i) for i in range(3)]

    async def run_task(self) -> int:
        return len(self.parts)
"""


def test_the_logs_command(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text(FLOW)
    assert cli("run", flow, cwd=tmp_path).returncode == 0
    shown = cli("logs", flow, "Part(1)", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    header, *rest = shown.stdout.splitlines()
    assert header.startswith("== Part(1) attempt 0 of run ")
    assert header.endswith("on thread: ok")
    assert rest == ["part 1 speaking"]
    never = cli("logs", flow, "Part(7)", cwd=tmp_path)
    assert (never.returncode, "has no attempt" in never.stdout) == (0, True)
    wrong = cli("logs", flow, "Nope(1)", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "NameError" in wrong.stderr
    helped = cli("logs", "--help", cwd=tmp_path)
    assert all(word in helped.stdout for word in ("TASKFILE", "TASK", "--cache-dir", "--last", "--follow"))


GATED = """
import anyio
from asyncflow import Requires, Task


class Early(Task):
    def run_task(self) -> int:
        print("early speaking")
        return 1


class Main(Task):
    early: Requires[int]

    def build_task(self, gate: str) -> None:
        self.early = Early()
        self.gate = gate

    async def run_task(self) -> int:
        while not await anyio.Path(self.gate).exists():  # the test opens it
            await anyio.sleep(0.05)
        return self.early
"""


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """Read `stream` line by line in a thread of its own: the lines, as they come."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def _read_until(lines: queue.Queue[str], count: int, text: str, timeout: float = 60) -> list[str]:
    """Read lines until `count` of them hold `text`; return all read."""
    read: list[str] = []
    deadline = time.monotonic() + timeout
    while sum(text in line for line in read) < count:
        read.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
    return read


def test_logs_follow_a_task_while_runs_go_on(tmp_path: Path) -> None:
    flow = tmp_path / "gated.py"
    flow.write_text(GATED)
    gate = tmp_path / "gate"
    asyncflow = [sys.executable, "-m", "asyncflow"]
    with subprocess.Popen(
        [*asyncflow, "logs", flow, "Early()", "--follow"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as follower:  # fmt: skip
        try:
            assert follower.stdout is not None
            assert follower.stderr is not None
            lines = _lines(follower.stdout)
            # It looked and waits (the run starts only now: a run's first attempt can reach
            # the history before a follower just started has looked at all).
            assert select.select([follower.stderr], [], [], 60)[0], "the follower said nothing"
            waiting = follower.stderr.readline()
            assert waiting.startswith("Early() has no attempt in the history of "), waiting
            with subprocess.Popen([*asyncflow, "run", flow, "--gate", gate], cwd=tmp_path, env=_env()) as run:
                # Early's attempt shows as it ends, while the run still waits at the gate.
                read = _read_until(lines, 1, "early speaking")
                assert read[0].startswith("== Early() attempt 0 of run ")
                assert run.poll() is None
                gate.touch()
                assert run.wait(timeout=60) == 0
            # A later run's attempt shows too.
            assert cli("clear", flow, "--all-of", "Early", "--gate", gate, cwd=tmp_path).returncode == 0
            assert cli("run", flow, "--gate", gate, cwd=tmp_path).returncode == 0
            read += _read_until(lines, 1, "early speaking")
            headers = [line for line in read if line.startswith("== Early() attempt 0 of run ")]
            assert len({h.split()[6] for h in headers}) == 2  # two runs
            follower.send_signal(signal.SIGINT)  # Ctrl-C ends it, quietly
            _, err = follower.communicate(timeout=30)
        finally:
            follower.kill()
    assert (follower.returncode, "Traceback" in err, "interrupted" in err) == (0, False, False), err


def test_the_show_command(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text(FLOW)
    before = cli("show", flow, "Main()", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert "state: stale: no result" in before.stdout
    assert "attempts: none in the history" in before.stdout
    assert cli("run", flow, cwd=tmp_path).returncode == 0
    main = cli("show", flow, "Main()", cwd=tmp_path).stdout.splitlines()
    assert main[:4] == ["Main()  (flow.Main())", "state: fresh (the next run reuses it)", "result: 3",
                        "requires: Part(0), Part(1), Part(2)"]  # fmt: skip
    assert main[-2].endswith("on loop: ok  (run " + main[-2].split("(run ")[1])
    part = cli("show", flow, "Part(2)", cwd=tmp_path).stdout
    assert "result: 'yyy" in part
    assert "...  (--result for all of it)" in part
    assert part.endswith("output of the latest attempt:\npart 2 speaking\n")
    whole = cli("show", flow, "Part(2)", "--result", cwd=tmp_path).stdout
    assert "y" * 300 in whole
    assert cli("show", flow, "flow.Part(2)", cwd=tmp_path).stdout == part  # its key, as the history shows it
    assert cli("logs", flow, "flow.Part(2)", cwd=tmp_path).stdout.endswith("part 2 speaking\n")
    wrong = cli("show", flow, "elsewhere.Part(2)", cwd=tmp_path)  # the key of another module's class
    assert wrong.returncode == 2
    assert "NameError: name 'elsewhere' is not defined" in wrong.stderr
    helped = cli("show", "--help", cwd=tmp_path)
    assert all(word in helped.stdout for word in ("TASKFILE", "TASK", "--cache-dir", "--result"))
