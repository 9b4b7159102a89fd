"""Child processes: one measurement per fresh process, with a timeout, its group killed after.

`run_once` starts one measurement (``run.py --one`` for asyncflow and the floors, the
peer's script in its venv for a peer) in a clean environment and returns its JSON
result; `run_child` runs a process in a session of its own, times it out and kills what
it leaves running; `run_table` does the same for a section's script (sections.py),
showing its progress as it comes; `ChildError` says why a child failed. `Context` is
what every measurement needs from the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite import Engine, Workload
from venvs import PeerSetup

# The harness's entry point, which a child of asyncflow or a floor runs with ``--one``.
RUN_PY = Path(__file__).resolve().parent / "run.py"


class ChildError(Exception):
    """A child that failed: `reason` in a line, for the table; the message adds its stderr."""

    def __init__(self, what: str, reason: str, stderr: str = "", *, timed_out: bool = False) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        super().__init__(f"{what}: {reason}" + (f"\n{tail}" if tail else ""))
        last = (stderr.strip().splitlines() or [""])[-1].strip()
        self.reason = f"{reason}: {last}"[:160] if last else reason
        self.timed_out = timed_out


def _kill_group(pid: int) -> None:
    """Kill what is left of the process group `pid` leads (a peer's server, workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_child(argv: list[str], what: str, *, env: dict[str, str], cwd: Path | None, timeout: float) -> str:
    """Run `argv` in a session of its own; return its last line of stdout (JSON), or raise `ChildError`.

    Output goes to files, not pipes, so a grandchild left running cannot hold the read up;
    whatever the child leaves running in its process group is killed when it ends.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            raise ChildError(what, f"timed out after {timeout:g} s", timed_out=True) from None
        finally:
            _kill_group(proc.pid)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise ChildError(what, f"exit status {code}", stderr)
    last = (stdout.strip().splitlines() or [""])[-1]
    try:
        if isinstance(json.loads(last), dict):
            return last
    except json.JSONDecodeError:
        pass
    raise ChildError(what, f"no JSON line at the end of its output: {last[:60]!r}", stderr)


def run_table(argv: list[str], what: str, *, timeout: float) -> str:
    """Run a section's script `argv` in a session of its own; return its stdout, or raise `ChildError`.

    Its stderr (progress, which a long section needs to show) is copied to ours as it
    comes, from a file read through a second handle: a pipe could be held open by a
    grandchild left running (Ray's, Dask's workers), and the child's own handle shares
    its offset with the child.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.NamedTemporaryFile("w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=_clean_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        with open(err.name) as progress:
            try:
                while (code := _wait_a_little(proc)) is None:
                    sys.stderr.write(progress.read())
                    if time.monotonic() > deadline:
                        raise ChildError(what, f"timed out after {timeout:g} s", timed_out=True)
            finally:
                _kill_group(proc.pid)
                proc.wait()
            sys.stderr.write(progress.read())
            progress.seek(0)
            stderr = progress.read()  # all of it, for the reason's last line
        out.seek(0)
        stdout = out.read()
    if code != 0:
        raise ChildError(what, f"exit status {code}", stderr)
    return stdout.strip()


def _wait_a_little(proc: subprocess.Popen[bytes]) -> int | None:
    """The child's exit status, or None while it still runs after half a second."""
    try:
        return proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return None


PEER_TIMEOUT_BUDGETS = 5
PYCACHE_DIR = Path("~/.cache/asyncflow-bench/pycache")


@dataclass(frozen=True)
class Context:
    """What every measurement needs from the command line."""

    backend: str
    timeout: float
    tmp: Path | None
    budget: float
    peers: dict[str, PeerSetup]

    def timeout_for(self, engine: Engine) -> float:
        """How long one child of `engine` may take: --timeout, for a peer at most 5 budgets."""
        return min(self.timeout, PEER_TIMEOUT_BUDGETS * self.budget) if engine.peer else self.timeout


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """This environment without asyncflow's settings; for a peer, its venv's in front."""
    drop = {"AF_CACHE_DIR", "AF_DETECT_SOURCE_CHANGE"}
    if venv is not None:
        drop |= {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if venv is not None:  # tools a peer starts by name (Parsl's worker pool) come from its venv
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    elif "PYTHONDONTWRITEBYTECODE" in env:
        # An installed asyncflow has its bytecode compiled: without it, a first run would
        # time compiling the modules it imports. Kept apart, so the checkout stays clean.
        del env["PYTHONDONTWRITEBYTECODE"]
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR.expanduser())
    return env


def run_once(engine: Engine, w: Workload, mode: str, cache: Path, ctx: Context) -> dict[str, Any]:
    """One measurement in a fresh process; the result in the harness's keys."""
    what = f"{w.label} {engine.name} {mode}"
    if engine.peer is None:
        argv = [sys.executable, str(RUN_PY), "--one", w.kind, str(w.size)]
        argv += ["--engine", engine.name, "--mode", mode, "--backend", ctx.backend, "--cache-dir", str(cache)]
        return json.loads(run_child(argv, what, env=_clean_env(), cwd=None, timeout=ctx.timeout))  # type: ignore[no-any-return]
    setup = ctx.peers[engine.peer]
    assert setup.python is not None
    assert setup.script is not None
    argv = [str(setup.python), str(setup.script), "--workload", w.kind, "--size", str(w.size)]
    argv += ["--cache-dir", str(cache)] + (["--variant", engine.variant] if engine.variant else [])
    # In the cache directory, so whatever the peer writes where it runs is measured and removed.
    timeout = ctx.timeout_for(engine)
    out = json.loads(run_child(argv, what, env=_clean_env(setup.venv), cwd=cache, timeout=timeout))
    executed = out.get("executed")
    out["run"] = executed
    out["reused"] = None if executed is None else out["nodes"] - executed
    return out  # type: ignore[no-any-return]
