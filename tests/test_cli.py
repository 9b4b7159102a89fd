"""The command line, run for real in subprocesses on taskfiles written to tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TASKS = """
from asyncflow import RequiresList, Task


class Square(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i * self.i


class Main(Task):
    parts: RequiresList[int]

    def build_task(self) -> None:
        self.parts = [Square(i) for i in range(4)]

    async def run_task(self) -> int:
        return sum(self.parts)


class Other(Task):
    def build_task(self) -> None:
        pass

    async def run_task(self) -> str:
        return "other"


class Takes(Task):
    def build_task(self, x: int) -> None:
        self.x = x

    async def run_task(self) -> int:
        return self.x


NOT_A_TASK = 3
"""

FAILING = """
from asyncflow import RequiresList, Task


class Fragile(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> float:
        return 1 / self.i


class Main(Task):
    parts: RequiresList[float]

    def build_task(self) -> None:
        self.parts = [Fragile(i) for i in range(3)]

    async def run_task(self) -> float:
        return sum(self.parts)
"""

CONSOLE_SCRIPT = Path(sys.executable).parent / "asyncflow"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AF_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def cli(*args: str | Path, cwd: Path, script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the command line (python -m asyncflow, or the console script) and capture it."""
    head = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "asyncflow"]
    return subprocess.run(
        [*head, *map(str, args)], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def taskfile(tmp_path: Path) -> Path:
    path = tmp_path / "flow.py"
    path.write_text(textwrap.dedent(TASKS))
    return path


@pytest.fixture
def failing(tmp_path: Path) -> Path:
    path = tmp_path / "fails.py"
    path.write_text(textwrap.dedent(FAILING))
    return path


def test_run_twice_reuses_the_cache_next_to_the_taskfile(taskfile: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    first = cli("run", taskfile, cwd=elsewhere)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["Main() = 14", first.stdout.splitlines()[1]]
    assert first.stdout.splitlines()[1].startswith("5 run, 0 from cache")
    assert (tmp_path / ".cache" / "asyncflow" / "index.sqlite").exists()
    assert not (elsewhere / ".cache").exists()
    second = cli("run", taskfile, "-l", "WARNING", cwd=elsewhere, script=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1].startswith("0 run, 5 from cache")
    assert second.stderr == ""  # -l WARNING after the command silences the INFO lines


def test_run_options(taskfile: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    args = ["-w", "2", "-t", "process", "--rate-limits", '{"flow.Square": 1}', "--no-detect-source-change"]
    done = cli("-l", "DEBUG", "run", taskfile, "--cache-dir", cache, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Main() = 14" in done.stdout
    assert (cache / "asyncflow" / "index.sqlite").exists()
    again = cli(
        "run", taskfile, "--cache-dir", cache, "--force-entrypoint", "--no-detect-source-change", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "1 run, 4 from cache" in again.stdout
    # Results made with detection off still name the code that made them: fresh with it on.
    detect = cli("run", taskfile, "--cache-dir", cache, "-D", cwd=tmp_path)
    assert "0 run, 5 from cache" in detect.stdout
    taskfile.write_text(taskfile.read_text().replace("self.i * self.i", "self.i * self.i * 1"))
    ignored = cli("run", taskfile, "--cache-dir", cache, "--no-detect-source-change", cwd=tmp_path)
    assert "0 run, 5 from cache" in ignored.stdout  # the code changed, but is not looked at
    detect = cli("run", taskfile, "--cache-dir", cache, "-D", cwd=tmp_path)
    assert "5 run, 0 from cache" in detect.stdout
    other = cli("run", taskfile, "--cache-dir", cache, "-e", "Other", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert "Other() = 'other'" in other.stdout


def test_run_through_a_prefix(taskfile: Path, tmp_path: Path) -> None:
    done = cli("run", taskfile, "--prefix", "flow.Square=env AF_X=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Main() = 14" in done.stdout


def test_a_failure_exits_1_with_a_summary(failing: Path, tmp_path: Path) -> None:
    done = cli("run", failing, "--on-error", "continue", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr  # the full traceback is in the log
    summary = done.stderr[done.stderr.index("asyncflow: 1 task(s) failed:") :]
    assert "  Fragile(0): ZeroDivisionError: division by zero" in summary
    status = cli("status", "--cache-dir", tmp_path / ".cache", "--json", cwd=tmp_path)
    classes = {c["task_name"]: c for c in json.loads(status.stdout)["classes"]}
    assert classes["fails.Fragile"]["nodes"] == 2  # Fragile(1), Fragile(2) were kept
    failure = classes["fails.Fragile"]["last_failure"]
    assert failure["task"] == "fails.Fragile(0)"
    assert "ZeroDivisionError" in failure["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "taskfile missing.py does not exist"),
        (
            ["run", "{taskfile}", "-e", "Nope"],
            "has no task 'Nope' (its task classes: Main, Other, Square, Takes)",
        ),
        (["run", "{taskfile}", "-e", "NOT_A_TASK"], "NOT_A_TASK in {taskfile} is int 3, not a Task subclass"),
        (["run", "{taskfile}", "-e", "Takes"], "the following arguments are required: --x"),
        (["run", "{taskfile}", "--rate-limits", "{gpu: 1}"], "--rate-limits '{gpu: 1}' is not valid JSON"),
        (
            ["run", "{taskfile}", "--rate-limits", '{"gpu": 0}'],
            "is not an object of channel names to positive ints",
        ),
        (["run", "{taskfile}", "--prefix", "gpu"], "--prefix 'gpu' is not CHANNEL=COMMAND"),
        (["run", "{taskfile}", "-w", "0"], "-w/--max-workers 0: give a positive number"),
        (["run", "{taskfile}", "-t", "gpu"], "argument -t/--executor: invalid choice: 'gpu'"),
        (["run", "{broken}"], "raised while being imported: NameError: name 'undefined' is not defined"),
        (
            ["clear", "{taskfile}", "--all-of", "Nope"],
            "--all-of Nope: taskfile {taskfile} has no task class 'Nope'",
        ),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_usage_errors_exit_2_naming_the_problem(
    args: list[str], message: str, taskfile: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("x = undefined\n")
    done = cli(
        *[a.replace("{taskfile}", str(taskfile)).replace("{broken}", str(broken)) for a in args], cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert message.replace("{taskfile}", str(taskfile)) in done.stderr
    assert done.stdout == ""


def test_status_without_a_cache(tmp_path: Path) -> None:
    done = cli("status", cwd=tmp_path)
    assert done.returncode == 0
    assert f"no asyncflow cache in {tmp_path / '.cache'}" in done.stdout
    as_json = cli("status", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout) == {"cache_dir": str(tmp_path / ".cache"), "classes": []}


def test_status_per_class(taskfile: Path, tmp_path: Path) -> None:
    assert cli("run", taskfile, cwd=tmp_path).returncode == 0
    done = cli("status", cwd=tmp_path, script=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"cache: {tmp_path / '.cache'}"
    assert lines[1].split()[:4] == ["task", "class", "nodes", "bytes"]
    assert lines[3].split()[:2] == ["flow.Square", "4"]
    doc = json.loads(cli("status", "--json", cwd=tmp_path).stdout)
    square = next(c for c in doc["classes"] if c["task_name"] == "flow.Square")
    assert square["nodes"] == 4
    assert square["bytes"] > 0
    assert square["last_run"] > 0
    assert square["last_failure"] is None


def test_clear_reports_removed_and_stale(taskfile: Path, tmp_path: Path) -> None:
    assert cli("run", taskfile, cwd=tmp_path).returncode == 0
    done = cli("clear", taskfile, "--all-of", "Square", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["removed 4 result(s) of flow.Square", "now stale (1): Main()"]
    again = cli("run", taskfile, cwd=tmp_path)
    assert "5 run, 0 from cache" in again.stdout
    everything = cli("clear", taskfile, cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines() == [
        "removed 5 result(s) of the graph of Main(): Square(0), Square(1), Square(2), Square(3), Main()",
        "nothing else became stale",
    ]
    assert "5 run, 0 from cache" in cli("run", taskfile, cwd=tmp_path).stdout


def test_graph_text(taskfile: Path, tmp_path: Path) -> None:
    pytest.importorskip("asyncflow._render")
    before = cli("graph", taskfile, cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert "[stale]  Main()" in before.stdout
    assert cli("run", taskfile, cwd=tmp_path).returncode == 0
    after = cli("graph", taskfile, "--format", "mermaid", "--output", tmp_path / "g.mmd", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert "Main()" in (tmp_path / "g.mmd").read_text()


DYNAMIC = """
import asyncflow
from asyncflow import Task


class Square(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        print("computing", self.i)
        return self.i * self.i


class Main(Task):
    async def run_task(self) -> int:
        return sum(await asyncflow.gather(*(Square(i) for i in range(3))))
"""


def test_a_taskfile_fanning_out_while_it_runs(tmp_path: Path) -> None:
    flow = tmp_path / "dynamic.py"
    flow.write_text(textwrap.dedent(DYNAMIC))
    first = cli("run", flow, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("computing") == 3
    # A new process makes the awaited tasks again from Main's record: from the taskfile.
    graph = cli("graph", flow, cwd=tmp_path)
    assert graph.returncode == 0, graph.stderr
    assert "4 nodes: 4 fresh, 0 stale, 0 failed" in graph.stdout
    assert "<~ Square(0), Square(1), Square(2)" in graph.stdout
    again = cli("run", flow, cwd=tmp_path)
    assert (again.returncode, again.stdout.count("computing")) == (0, 0)
    cleared = cli("clear", flow, "--all-of", "Square", cwd=tmp_path)
    assert cleared.returncode == 0, cleared.stderr
    assert "now stale (1): Main()" in cleared.stdout
    graph = cli("graph", flow, cwd=tmp_path)
    assert "[stale]  Main(): dynamic dependency Square(0) is stale" in graph.stdout
    third = cli("run", flow, cwd=tmp_path)
    assert (third.returncode, third.stdout.count("computing")) == (0, 3)
    assert "4 fresh" in cli("graph", flow, cwd=tmp_path).stdout


def test_graph_image_needs_graphviz(taskfile: Path, tmp_path: Path) -> None:
    pytest.importorskip("asyncflow._render")
    done = cli("graph", taskfile, "--output", tmp_path / "g.svg", cwd=tmp_path)
    if shutil.which("dot") is None:
        assert done.returncode == 1
        assert "Graphviz is not installed" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "g.svg").read_text().lstrip().startswith("<")


MISSING_INPUT = """
from asyncflow import File, Requires, Task


class Count(Task):
    def build_task(self, data: File) -> None:
        self.data = data

    def run_task(self) -> int:
        return len(self.data.path.read_text())


class Main(Task):
    n: Requires[int]

    def build_task(self) -> None:
        self.n = Count(File("missing.csv"))

    async def run_task(self) -> int:
        return self.n
"""


def test_an_asyncflow_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "inputs.py"
    path.write_text(textwrap.dedent(MISSING_INPUT))
    done = cli("run", path, "-l", "CRITICAL", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        "asyncflow run: InputFileError: Count(File('missing.csv')): its input File('missing.csv') does not exist"
    )
    (tmp_path / "missing.csv").write_text("abc")
    again = cli("run", path, "-l", "CRITICAL", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Main() = 3")


def test_a_bad_option_from_the_environment_is_a_usage_error(taskfile: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncflow", "graph", str(taskfile)],
        cwd=tmp_path,
        env={**_env(), "AF_DETECT_SOURCE_CHANGE": "maybe"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "asyncflow graph: error: $AF_DETECT_SOURCE_CHANGE='maybe' is not a boolean" in done.stderr


ARGUMENTS = """
from typing import Literal

from asyncflow import Task


class Main(Task):
    def build_task(
        self, n: int, name: str = "x", scale: float = 1.0, verbose: bool = False,
        sizes: tuple[int, ...] = (1,), mode: Literal["fast", "slow"] = "fast", extra: dict = {},
    ) -> None:
        self.args = (n, name, scale, verbose, sizes, mode, extra)

    async def run_task(self) -> str:
        return repr(self.args)
"""


def test_arguments_after_the_taskfile_are_the_entrypoints(tmp_path: Path) -> None:
    flow = tmp_path / "args.py"
    flow.write_text(ARGUMENTS)
    given = [
        "--n",
        "5",
        "--name",
        "y",
        "--verbose",
        "--sizes",
        "2",
        "3",
        "--mode",
        "slow",
        "--extra",
        '{"a": 1}',
    ]
    done = cli("run", flow, *given, "-l", "WARNING", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "= \"(5, 'y', 1.0, True, (2, 3), 'slow', {'a': 1})\"" in done.stdout
    )  # converted by the annotations
    defaults = cli("run", flow, "--n", "1", "-l", "WARNING", cwd=tmp_path)
    assert "= \"(1, 'x', 1.0, False, (1,), 'fast', {})\"" in defaults.stdout
    for wrong, says in [
        ([], "the following arguments are required: --n"),
        (["--n", "five"], "argument --n: invalid int value: 'five'"),
        (["--n", "1", "--mode", "medium"], "argument --mode: invalid choice: 'medium'"),
        (["--n", "1", "--bogus", "2"], "unrecognized arguments: --bogus 2"),
    ]:
        failed = cli("run", flow, *wrong, cwd=tmp_path)
        assert (failed.returncode, says in failed.stderr) == (2, True), failed.stderr
    helped = cli("run", flow, "--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "arguments of Main.build_task" in helped.stdout
    assert all(
        f"--{name}" in helped.stdout for name in ("n", "name", "scale", "verbose", "sizes", "mode", "extra")
    )
    assert "--cache-dir" in helped.stdout  # the command's own options too
    alone = cli("run", "--help", cwd=tmp_path)
    assert (alone.returncode, alone.stdout.startswith("usage: asyncflow run")) == (0, True)


def test_output_cut_short_by_its_reader_is_no_error(tmp_path: Path) -> None:
    flow = tmp_path / "big.py"
    flow.write_text("from asyncflow import Task\n\nclass Main(Task):\n    async def run_task(self) -> str:\n"
                    "        return 'x' * 1_000_000\n")  # fmt: skip
    assert cli("run", flow, cwd=tmp_path).returncode == 0
    head = [sys.executable, "-m", "asyncflow", "show", str(flow), "Main()", "--result"]
    with subprocess.Popen(
        head, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does, long before the result is all written
        _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, b"")


def test_graph_clear_show_and_logs_take_the_entrypoints_arguments(taskfile: Path, tmp_path: Path) -> None:
    ran = cli("run", taskfile, "-e", "Takes", "--x", "3", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "Takes(3) = 3" in ran.stdout
    graph = cli("graph", taskfile, "-e", "Takes", "--x", "3", cwd=tmp_path)
    assert (graph.returncode, graph.stdout.splitlines()) == (
        0,
        ["1 node: 1 fresh, 0 stale, 0 failed (deps first)", "[fresh]  Takes(3)"],
    ), graph.stderr
    assert (
        "[stale]  Takes(4): no result"
        in cli("graph", taskfile, "-e", "Takes", "--x", "4", cwd=tmp_path).stdout
    )
    # show and logs: a class's name as TASK, then its arguments.
    shown = cli("show", taskfile, "Takes", "--x", "3", cwd=tmp_path)
    assert shown.stdout.splitlines()[:3] == [
        "Takes(3)  (flow.Takes(3))",
        "state: fresh (the next run reuses it)",
        "result: 3",
    ], shown.stderr
    logs = cli("logs", taskfile, "Takes", "--x", "3", cwd=tmp_path)
    assert logs.stdout.startswith("== Takes(3) attempt 0 of run "), logs.stderr
    cleared = cli("clear", taskfile, "-e", "Takes", "--x", "3", cwd=tmp_path)
    assert cleared.stdout.splitlines() == [
        "removed 1 result(s) of the graph of Takes(3): Takes(3)",
        "nothing else became stale",
    ], cleared.stderr
    # Their --help after the taskfile lists the arguments, as run's does.
    for command in ("graph", "clear"):
        helped = cli(command, taskfile, "-e", "Takes", "--help", cwd=tmp_path)
        assert helped.returncode == 0, helped.stderr
        assert helped.stdout.startswith(f"usage: asyncflow {command} [options] TASKFILE")
        assert "arguments of Takes.build_task (after the taskfile):\n  --x INT  required" in helped.stdout
        alone = cli(command, "--help", cwd=tmp_path)
        assert (alone.returncode, "(after the taskfile):" in alone.stdout) == (0, False), alone.stderr
        assert "--cache-dir" in alone.stdout
    for wrong, says in [
        (["graph", taskfile, "-e", "Takes"], "the following arguments are required: --x"),
        (["clear", taskfile, "--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["graph"], "the following arguments are required: TASKFILE"),
        (["show", taskfile, "Takes(3)", "--x", "3"], "options after TASK are build_task arguments"),
        (["logs", taskfile, "NOT_A_TASK", "--x", "3"], "NOT_A_TASK in"),
        (["status", "--x", "3"], "unrecognized arguments: --x 3"),
    ]:
        failed = cli(*wrong, cwd=tmp_path)
        assert (failed.returncode, says in failed.stderr) == (2, True), failed.stderr
