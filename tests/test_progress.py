"""Live progress: log lines off a terminal, a display redrawn in place on a pseudo-terminal."""

from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from asyncflow import RequiresList, Task, TaskFailedError, _progress
from asyncflow._progress import RunProgress
from asyncflow.examples.binomial import Choose

from .test_scheduler import Boom
from .workflows import fan_workflow

REPO_ROOT = Path(__file__).resolve().parent.parent


async def test_progress_off_a_terminal_logs_lines(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="asyncflow.progress"):
        assert await fan_workflow(3, 0.0).run(cache_dir=cache_dir, progress=True) == fan_workflow(
            3, 0
        ).expected(0, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncflow.progress"]
    assert re.fullmatch(
        r"tests\.workflows\.Sleeper: 6/6 done \(6 run, 0 cached, 0 failed\) in \d+\.\d\d s", lines[0]
    )
    assert lines[1].startswith("tests.workflows.Pair: 3/3 done (3 run, 0 cached, 0 failed)")
    assert lines[2].startswith("tests.workflows.FanSum: 1/1 done")
    assert re.fullmatch(
        r"run ended after \d+\.\d\d s: 10/10 done \(10 run, 0 cached, 0 failed, 0 not run\) in 3 task class\(es\)",
        lines[3],
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="asyncflow.progress"):
        await fan_workflow(4, 0.0).run(cache_dir=cache_dir, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncflow.progress"]
    assert lines[0].startswith("tests.workflows.Sleeper: 8/8 done (2 run, 6 cached, 0 failed)")


async def test_progress_counts_failures(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="asyncflow.progress"), pytest.raises(TaskFailedError):
        await Boom(1).run(cache_dir=cache_dir, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncflow.progress"]
    assert lines[0].startswith("tests.test_scheduler.Boom: 1/1 done (0 run, 0 cached, 1 failed)")
    assert "(0 run, 0 cached, 1 failed, 0 not run)" in lines[-1]


async def test_no_progress_by_default(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="asyncflow.progress"):
        await Choose(3, 1).run(cache_dir=cache_dir)
    assert not [r for r in caplog.records if r.name == "asyncflow.progress"]


_SCRIPT = """
import sys, anyio
from tests.workflows import fan_workflow
root = fan_workflow(12, 0.06)
print(anyio.run(lambda: root.run(cache_dir=sys.argv[1], rate_limits={"leaf": 3}, progress=True)))
"""


def _read_all(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def _on_a_terminal(script: str, cache_dir: Path) -> str:
    """Run `script` with `cache_dir` in a pseudo-terminal; return what it showed there."""
    main, child = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(cache_dir)], stdout=child, stderr=child, cwd=REPO_ROOT, env=env
    )
    os.close(child)
    try:
        out = _read_all(main, proc, timeout=60).decode(errors="replace")
        assert proc.wait(timeout=10) == 0, out
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_is_redrawn_on_a_terminal(cache_dir: Path) -> None:
    out = _on_a_terminal(_SCRIPT, cache_dir)
    assert str(fan_workflow(12, 0).expected(0, 12)) in out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    # One line per class with done/total, the last drawing showing all done.
    assert re.search(r"tests\.workflows\.Sleeper .*24/24 .*running 0 .*cached 0 .*failed 0", plain), plain
    assert re.search(r"tests\.workflows\.Pair .*12/12", plain), plain
    assert re.search(r"tests\.workflows\.FanSum .*1/1", plain), plain
    # Redrawn in place: several counts of the sleepers, and the cursor moved back up.
    counts = set(re.findall(r"Sleeper .*?(\d+)/24", plain))
    assert len(counts) >= 3, counts
    assert "\x1b[2K" in out or re.search(r"\x1b\[\d*A", out), repr(out[:500])


class Nap(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:  # a plain def: it needs one of the max_workers threads
        time.sleep(0.05)
        return self.i


class Naps(Task):
    naps: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.naps = [Nap(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.naps)


class _Spy(RunProgress):
    """The real progress, keeping the most queued and running bodies of `Nap` it showed."""

    most: ClassVar[dict[str, int]] = {}

    def _update(self, counts: Any) -> None:
        if counts.name == Nap.task_name:
            _Spy.most["queued"] = max(_Spy.most.get("queued", 0), counts.queued)
            _Spy.most["running"] = max(_Spy.most.get("running", 0), counts.running)
            _Spy.most["end"] = counts.queued + counts.running
        super()._update(counts)


async def test_running_counts_bodies_that_run_queued_the_others(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_progress, "RunProgress", _Spy)
    _Spy.most.clear()
    assert await Naps(6).run(cache_dir=cache_dir, max_workers=2, progress=True) == 15
    assert _Spy.most["running"] == 2  # the threads of max_workers=2, not the bodies handed out
    assert _Spy.most["queued"] >= 2  # the others waited for a thread
    assert _Spy.most["end"] == 0


_LOGGING_SCRIPT = """
import logging, sys, anyio
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from tests.test_progress import Chatty
print(anyio.run(lambda: Chatty().run(cache_dir=sys.argv[1], rate_limits={"chat": 2}, progress=True)))
"""


class ChattyStep(Task, channel="chat"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await anyio.sleep(0.05)
        logging.getLogger("chatty").warning("step %d says hi", self.i)
        return self.i


class Chatty(Task):
    steps: RequiresList[int]

    def build_task(self) -> None:
        self.steps = [ChattyStep(i) for i in range(12)]

    async def run_task(self) -> int:
        return sum(self.steps)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_log_lines_go_above_the_live_lines(cache_dir: Path) -> None:
    out = _on_a_terminal(_LOGGING_SCRIPT, cache_dir)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    said = [line for line in re.split(r"[\r\n]+", plain) if "says hi" in line]
    assert len(said) == 12
    # Each on a line of its own, not written into a frame of the live lines.
    assert all(re.fullmatch(r"WARNING chatty: step \d+ says hi\s*", line) for line in said), said


def test_progress_off_a_kernel_never_imports_ipython(cache_dir: Path) -> None:
    script = (
        "import sys, anyio\n"
        "from asyncflow.examples.binomial import Choose\n"
        "anyio.run(lambda: Choose(4, 2).run(cache_dir=sys.argv[1], progress=True))\n"
        "assert 'IPython' not in sys.modules, 'progress imported IPython'\n"
    )
    subprocess.run([sys.executable, "-c", script, str(cache_dir)], cwd=REPO_ROOT, check=True, timeout=60)
