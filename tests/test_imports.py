"""What starting up imports: `import asyncflow`, ``asyncflow --help`` and a job's worker.

Each is checked in a fresh interpreter by the modules it leaves out of ``sys.modules``,
not by timing it (``benchmarks/startup.py`` times them). A module listed here is imported
where it is first needed instead: by a run, a command, a placement or a pool.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from asyncflow import Task
from asyncflow._cache import blobs
from asyncflow._runners import payload

from .worker_tasks import Square, Squares

ROOT = Path(__file__).parent.parent

# Neither the engine nor what only a run, a cache or a place to run needs.
ENGINE = [
    "anyio",
    "sqlite3",
    "cloudpickle",
    "rich",
    "asyncssh",
    "subprocess",
    "asyncflow._scheduler",
    "asyncflow._cache.index",
    "asyncflow._cache.blobs",
    "asyncflow._runners.choose",
    "asyncflow._runners.jobs",
    "asyncflow._runners.prefix",
    "asyncflow._runners.process",
    "asyncflow._runners.slurm",
    "asyncflow._runners.ssh",
    "asyncflow._progress",
    "asyncflow._taskfile",
]

# What `import asyncflow` leaves out besides: they cost a third of its time or more.
LIBRARY = [
    *ENGINE,
    "inspect",
    "dataclasses",
    "pathlib",
    "hashlib",
    "concurrent.futures",
    "typing_extensions",
    "logging",
    "json",
    "asyncflow._placements",
    "asyncflow._stats",
    "asyncflow._mainguard",
    "asyncflow._cli",
]

# A job's worker loads the payload's helpers, and nothing of the parent's side.
WORKER = [
    "sqlite3",
    "rich",
    "asyncssh",
    "subprocess",
    "asyncflow._scheduler",
    "asyncflow._cache.index",
    "asyncflow._cache.session",
    "asyncflow._runners.choose",
    "asyncflow._runners.jobs",
    "asyncflow._runners.warm",
    "asyncflow._runners.prefix",
    "asyncflow._runners.slurm",
    "asyncflow._runners.ssh",
    "asyncflow._progress",
    "asyncflow._cli",
    "asyncflow._taskfile",
]

# Nor, for a plain `def` body that returns plain data, the event loop, the cache's modules,
# cloudpickle and what they import, the captures, threads, JSON, or traceback (a body that
# raised loads it): what each job would pay for again.
JOB = [
    *WORKER,
    "anyio",
    "cloudpickle",
    "dataclasses",
    "inspect",
    "logging",
    "pathlib",
    "hashlib",
    "gzip",
    "shutil",
    "queue",
    "traceback",
    "asyncflow._cache.blobs",
    "asyncflow._cache.paths",
    "asyncflow._capture",
    "asyncflow._stats",
    "asyncflow._runners.local",
    "asyncflow._runners.values",
    "json",
    "threading",
]

# Nor does a run in a script, cold or warm: what only clearing (shutil, with bz2 and lzma),
# `asyncflow check`, the history's readers, input files and `run_with_stats` need, and what
# it does more cheaply (BLAKE2b without hashlib's OpenSSL bindings, gzip's format read with
# zlib, the library's directories without sysconfig's build configuration).
FIRST_RUN = [
    "hashlib",
    "gzip",
    "sysconfig",
    "shutil",
    "bz2",
    "lzma",
    "anyio.from_thread",
    "asyncflow._stats",
    "asyncflow._cache.store",
    "asyncflow._cache.check",
    "asyncflow._cache.history",
    "asyncflow._cache.files",
]

# `python -m asyncflow.worker JOB`, as a job prefix runs it.
RUN_WORKER = "import sys\nfrom asyncflow.worker import main\nsys.exit(main())"


# Imported by dependencies on Python 3.10, not by asyncflow: the exceptiongroup backport
# (asyncflow's errors need ExceptionGroup) imports inspect, typing_extensions and
# traceback, and cloudpickle's import of platform brings subprocess there.
DEPENDENCIES_310 = (
    {"inspect", "typing_extensions", "traceback", "subprocess"} if sys.version_info < (3, 11) else set()
)


def _loaded(code: str, *args: str) -> set[str]:
    """Run `code` in a fresh interpreter (from the repository's root) and return its sys.modules at exit.

    What dependencies import on this Python regardless (`DEPENDENCIES_310`) is left out.
    """
    # atexit and sys only: both are loaded before any code runs, unlike json.
    report = (
        "import atexit, sys\natexit.register(lambda: print('MODULES', *sys.modules, file=sys.__stderr__))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", report + code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:]) - DEPENDENCIES_310


def test_import_asyncflow_leaves_the_engine_out() -> None:
    loaded = _loaded("import asyncflow")
    assert "asyncflow._task" in loaded
    assert sorted(loaded & set(LIBRARY)) == []


def test_public_names_from_deferred_modules_still_import() -> None:
    loaded = _loaded(
        "from asyncflow import Slurm, RunStats, Task\nassert Slurm.__module__ == 'asyncflow._placements'"
    )
    assert {"asyncflow._placements", "asyncflow._stats"} <= loaded


def test_defining_a_task_class_leaves_inspect_out() -> None:
    # A worker imports modules of tasks and unpickles tasks: it never needs their signatures.
    code = "import asyncflow\nclass T(asyncflow.Task):\n    def build_task(self, n: int) -> None:\n        pass\n"
    assert "inspect" not in _loaded(code)
    if not DEPENDENCIES_310:  # else inspect is there from the start
        assert "inspect" in _loaded(code + "T(1)\n")


def test_cli_help_leaves_the_engine_out() -> None:
    code = "import sys\nfrom asyncflow._cli import main\nsys.argv[0] = 'asyncflow'\nsys.exit(main())"
    loaded = _loaded(code, "--help")
    assert "argparse" in loaded
    # Nor what only the commands use: their logging, JSON, paths and signatures.
    assert sorted(loaded & {*ENGINE, "logging", "json", "pathlib", "inspect", "dataclasses"}) == []


def test_worker_leaves_the_parent_side_out() -> None:
    # What `python -m asyncflow.worker JOB` imports before it reads the job.
    loaded = _loaded("import asyncflow.worker")
    assert sorted(loaded & set(JOB)) == []


def test_a_run_imports_only_what_it_needs(tmp_path: Path) -> None:
    code = "import sys\nfrom tests.worker_tasks import Square\nassert Square(3).run_graph(cache_dir=sys.argv[1]) == 9"
    for _ in ("cold", "warm"):
        loaded = _loaded(code, str(tmp_path))
        assert "asyncflow._scheduler" in loaded
        assert sorted(loaded & set(FIRST_RUN)) == []


def _job(cache_dir: Path, task: Task[Any, Any]) -> Path:
    # As a run prepares a body's attempt (its cache directory goes with the task), then writes its job.
    task.__af_build__()
    task.__af_enter__({}, cache_dir)
    return payload.write_payload(cache_dir, "job", task)


def test_a_plain_job_imports_only_what_it_needs(tmp_path: Path) -> None:
    job = _job(tmp_path, Square(3))
    loaded = _loaded(RUN_WORKER, str(job))
    answer = payload.read_answer(job)
    assert answer is not None
    assert answer.pickled is not None
    assert pickle.loads(answer.pickled) == 9
    assert "tests.worker_tasks" in loaded
    assert sorted(loaded & set(JOB)) == []


def test_a_job_imports_cloudpickle_for_a_result_that_needs_it(tmp_path: Path) -> None:
    # A list may hold objects that travel by value: cloudpickle pickles it, as in a thread.
    job = _job(tmp_path, Squares(3))
    loaded = _loaded(RUN_WORKER, str(job))
    answer = payload.read_answer(job)
    assert answer is not None
    assert answer.pickled == blobs.dumps([0, 1, 4])
    assert "cloudpickle" in loaded
