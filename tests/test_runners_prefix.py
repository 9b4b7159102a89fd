"""Bodies through a job prefix: real subprocesses, labelled output, errors, cancellation."""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncflow import RequiresList, Task, TaskFailedError
from asyncflow._cache.store import attempts_of_node

ENV_PREFIX = ["env", "AF_TEST_MARK=class"]


class Where(Task, job_prefix=ENV_PREFIX, channel="cluster"):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> dict[str, object]:
        return {
            "i": self.i,
            "pid": os.getpid(),
            "mark": os.environ.get("AF_TEST_MARK"),
            "job": sys.argv[-1],
        }


class AsyncWhere(Task, job_prefix=ENV_PREFIX):
    async def run_task(self) -> int:
        await anyio.sleep(0.01)
        return os.getpid()


class Many(Task):
    parts: RequiresList[dict[str, object]]

    def build_task(self, n: int) -> None:
        self.parts = [Where(i) for i in range(n)]

    async def run_task(self) -> list[object]:
        return [p["i"] for p in self.parts]


async def test_class_prefix_runs_body_in_a_worker_process(cache_dir: Path) -> None:
    with anyio.fail_after(60):
        out = await Where(1).run(cache_dir=cache_dir)
    assert out["i"] == 1
    assert out["mark"] == "class"
    assert out["pid"] != os.getpid()
    # The payload lives under the cache directory, not /tmp, and is gone afterwards.
    job = Path(str(out["job"]))
    assert job.is_relative_to(cache_dir / "asyncflow" / "jobs")
    assert not await anyio.Path(job).exists()
    # The result was committed by the parent: the next run reuses it.
    _, stats = await Where(1).run_with_stats(cache_dir=cache_dir)
    assert stats.reused == 1


async def test_async_body_under_a_prefix(cache_dir: Path) -> None:
    with anyio.fail_after(60):
        assert await AsyncWhere().run(cache_dir=cache_dir) != os.getpid()


async def test_run_time_prefix_wins_over_the_class(cache_dir: Path) -> None:
    with anyio.fail_after(60):
        out = await Where(2).run(cache_dir=cache_dir, prefixes={"cluster": ["env", "AF_TEST_MARK=runtime"]})
    assert out["mark"] == "runtime"


async def test_prefix_for_a_class_without_one(cache_dir: Path) -> None:
    with anyio.fail_after(60):
        value = await Printer().run(cache_dir=cache_dir, prefixes={Printer.task_name: ["env"]})
    assert value != os.getpid()
    # The history names the job: the pid of the command launched (env execs the worker).
    (attempt,) = await attempts_of_node(cache_dir, Printer().__af_key__, 5)
    assert (attempt.place, attempt.outcome) == (f"prefix: env (pid {value})", "ok")


class Printer(Task):
    def run_task(self) -> int:
        print("hello from the job", flush=True)
        print("a warning", file=sys.stderr, flush=True)
        return os.getpid()


class PrintedPrefixed(Printer, job_prefix=["env"]):
    pass


async def test_output_streams_back_labelled(cache_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(60):
        await PrintedPrefixed().run(cache_dir=cache_dir)
    out, err = capfd.readouterr()
    assert "[PrintedPrefixed()] hello from the job\n" in out
    assert "[PrintedPrefixed()] a warning\n" in err


class Boom(Task, job_prefix=["env"]):
    def run_task(self) -> None:
        print("about to fail", file=sys.stderr, flush=True)
        raise ValueError("boom in the job")


async def test_a_body_that_raises(cache_dir: Path) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await Boom().run(cache_dir=cache_dir)
    error = info.value
    assert str(error).startswith("Boom() failed: ValueError: boom in the job")
    assert error.returncode == 1
    assert error.command is not None
    assert error.command[:4] == ("env", sys.executable, "-m", "asyncflow.worker")
    assert error.stderr_tail is not None
    assert "about to fail" in error.stderr_tail
    assert isinstance(error.__cause__, ValueError)
    assert "remote traceback" in str(error)
    assert 'raise ValueError("boom in the job")' in str(error)


class Crash(Task, job_prefix=["env"]):
    def run_task(self) -> None:
        print("dying", file=sys.stderr, flush=True)
        os._exit(7)


async def test_a_worker_that_dies(cache_dir: Path) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError, match="exited with status 7") as info:
        await Crash().run(cache_dir=cache_dir)
    assert info.value.returncode == 7
    assert info.value.stderr_tail is not None
    assert "dying" in info.value.stderr_tail
    # A job that never answers is still named by the pid it was launched as.
    (attempt,) = await attempts_of_node(cache_dir, Crash().__af_key__, 5)
    assert attempt.outcome == "failed"
    assert re.fullmatch(r"prefix: env \(pid \d+\)", attempt.place), attempt.place


class BadPrefix(Task, job_prefix=["/nonexistent/srun"]):
    def run_task(self) -> None:
        return None


class FailingPrefix(Task, job_prefix=["false"]):
    def run_task(self) -> None:
        return None


async def test_prefix_problems(cache_dir: Path) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError, match="could not start its job command"):
        await BadPrefix().run(cache_dir=cache_dir)
    with anyio.fail_after(60), pytest.raises(TaskFailedError, match="status 1 without an answer"):
        await FailingPrefix().run(cache_dir=cache_dir)


class Sleeper(Task, job_prefix=["env"]):
    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> None:
        Path(self.pidfile).write_text(str(os.getpid()))
        time.sleep(60)


async def test_cancellation_ends_the_job(cache_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: Sleeper(str(pidfile)).run(cache_dir=cache_dir))
            while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110 - another process writes it
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_several_prefixed_bodies(cache_dir: Path) -> None:
    with anyio.fail_after(120):
        assert await Many(4).run(cache_dir=cache_dir, rate_limits={"cluster": 2}) == [0, 1, 2, 3]


TASKFILE = """
import os
from asyncflow import Task

class FromFile(Task, job_prefix=["env"]):
    def run_task(self) -> str:
        return f"ran in {os.getpid()}"
"""


async def test_taskfile_loaded_by_path(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "my_taskfile.py"
    path.write_text(textwrap.dedent(TASKFILE))
    spec = importlib.util.spec_from_file_location("af_loaded_by_path", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "af_loaded_by_path", module)
    spec.loader.exec_module(module)
    with anyio.fail_after(60):
        value = await module.FromFile().run(cache_dir=cache_dir)
    assert value.startswith("ran in ")
    assert value != f"ran in {os.getpid()}"


MAIN_SCRIPT = """
import os, sys
from asyncflow import Task

class InMain(Task, job_prefix=["env"]):
    def run_task(self) -> int:
        return os.getpid()

if __name__ == "__main__":
    print(InMain().run_graph(cache_dir=sys.argv[1]) != os.getpid())
"""


def test_task_in_main_under_a_prefix(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


class Overlap(Task, job_prefix=["env"]):
    def build_task(self, i: int, log: str) -> None:
        self.log = log

    def run_task(self) -> None:
        with open(self.log, "a") as f:
            f.write(f"start {time.monotonic()}\n")
        time.sleep(0.3)
        with open(self.log, "a") as f:
            f.write(f"end {time.monotonic()}\n")


class Overlaps(Task):
    parts: RequiresList[None]

    def build_task(self, n: int, log: str) -> None:
        self.parts = [Overlap(i, log) for i in range(n)]

    async def run_task(self) -> None:
        return None


async def test_max_workers_bounds_jobs(cache_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with anyio.fail_after(120):
        await Overlaps(3, str(log)).run(cache_dir=cache_dir, max_workers=1)
    events = sorted((float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines()))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 1


class Stubborn(Task, job_prefix=["env"]):
    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> None:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL can end it
        Path(self.pidfile).write_text(str(os.getpid()))
        time.sleep(60)


async def test_a_job_that_ignores_sigterm_is_killed(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncflow._runners import jobs

    monkeypatch.setattr(jobs, "GRACE", 0.5)
    pidfile = tmp_path / "pid"
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: Stubborn(str(pidfile)).run(cache_dir=cache_dir))
            while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110 - another process writes it
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


class TooSlow(Task, job_prefix=["env"], timeout=3):  # room for the worker to start on a loaded machine
    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> None:
        Path(self.pidfile).write_text(str(os.getpid()))
        time.sleep(60)


async def test_timeout_ends_the_job(cache_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with anyio.fail_after(30), pytest.raises(TaskFailedError, match=r"timed out after 3 s"):
        await TooSlow(str(pidfile)).run(cache_dir=cache_dir)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


class Counted(Task, job_prefix=["env"]):
    def build_task(self, log: str) -> None:
        self.log = log

    def run_task(self) -> int:
        with open(self.log, "a") as f:
            f.write("ran\n")
        time.sleep(0.2)
        return 42


async def test_concurrent_runs_share_a_prefixed_node(cache_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    results: list[int] = []

    async def run() -> None:
        results.append(await Counted(str(log)).run(cache_dir=cache_dir))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(run)
    assert results == [42, 42, 42]
    assert log.read_text() == "ran\n"


class FlakyJob(Task, job_prefix=["env"], retries=2, retry_delay=0):
    def build_task(self, log: str) -> None:
        self.log = log

    def run_task(self) -> str:
        with open(self.log, "a") as f:
            f.write("try\n")
        if len(Path(self.log).read_text().splitlines()) < 3:
            raise RuntimeError("not yet")
        return "done"


async def test_retries_of_a_prefixed_body(cache_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with anyio.fail_after(60):
        value, stats = await FlakyJob(str(log)).run_with_stats(cache_dir=cache_dir)
    assert value == "done"
    assert stats[FlakyJob.task_name].retried == 2


async def _helper() -> int:
    return 1


def _attempt(log: str) -> None:
    with open(log, "a") as f:
        f.write("try\n")


class ForgetsAwaitInAJob(Task, job_prefix=["env"], retries=2, retry_delay=0):
    def build_task(self, log: str) -> None:
        self.log = log

    async def run_task(self) -> Any:
        _attempt(self.log)
        return _helper()  # the mistake: `return await _helper()`


class YieldsInAJob(Task, job_prefix=["env"], retries=2, retry_delay=0):
    def build_task(self, log: str) -> None:
        self.log = log

    def run_task(self) -> Any:
        _attempt(self.log)
        return (i for i in range(3))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (ForgetsAwaitInAJob, "returned a coroutine, which cannot be stored: did you forget `await`?"),
        (YieldsInAJob, "returned a generator, which cannot be stored: return a list(...) instead"),
    ],
)
async def test_an_unstorable_result_is_not_retried(
    cache_dir: Path, tmp_path: Path, cls: type[Task[Any, Any]], message: str
) -> None:
    log = tmp_path / "log"
    task = cls(str(log))
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await task.run(cache_dir=cache_dir)
    error = info.value
    assert str(error).splitlines()[0] == f"{task!r} {message}"
    assert error.task == repr(task)
    assert error.returncode == 1
    assert "cannot pickle" in str(error)  # the remote traceback shows the pickling error
    assert log.read_text() == "try\n"  # one attempt of three


KILL_SCRIPT = """
import os, sys, time
from asyncflow import RequiresList, Task

class Leaf(Task, job_prefix=["env"]):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        with open(os.environ["AF_LOG"], "a") as f:
            f.write(f"{self.i}\\n")
        time.sleep(0.05)
        return self.i * self.i

class Total(Task):
    parts: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.parts = [Leaf(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)

if __name__ == "__main__":
    print(Total(int(sys.argv[2])).run_graph(cache_dir=sys.argv[1], max_workers=4))
"""


def test_kill_9_while_prefixed_jobs_run(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(KILL_SCRIPT)
    cache = tmp_path / "cache"
    log = tmp_path / "log"
    env = {**os.environ, "AF_LOG": str(log)}
    n = 24
    command = [sys.executable, str(script), str(cache), str(n)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (not log.exists() or len(log.read_text().splitlines()) < 8) and proc.poll() is None:
        assert time.monotonic() < deadline, "the workflow did not start its jobs"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    # The same workflow, run again (a new process: the taskfile is its __main__), completes
    # from whatever the killed one kept, and the index is whole.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(i * i for i in range(n)))
    conn = sqlite3.connect(cache / "asyncflow" / "index.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
