"""Benchmark harness: time asyncflow's workloads cold and warm, next to floors and peers.

    python benchmarks/run.py [--quick] [--no-peers] [--backend asyncio|trio] [--only W2 ...]

Engines: asyncflow itself; the event-loop floors of floor.py (``floor``: plain coroutines
in an anyio task group; ``native``: the backend's own task group; ``naive-cache``: the
anyio floor writing one pickle file per result, and reading them back when warm); and the
peers, other workflow engines run by ``benchmarks/peers/<peer>_peer.py`` (the protocol is
in peers/common.py), each in a virtualenv of its own that this harness builds from
``benchmarks/peers/<peer>.txt`` and reuses (under ``~/.cache/asyncflow-bench/venvs``).

For every workload, engine and repeat, a fresh temporary cache directory is made; one
child process runs the workload cold (empty cache), a second child runs it again warm
(same cache, everything reusable); for asyncflow on W2 a third clears the root's result
and runs again (root-stale: one node runs, reading every leaf from the cache). Engines
without a cache (``floor``, ``native``, dask) run cold only. Each child times the run itself (not
interpreter start or imports) and reports its peak RSS; the parent measures the cache on
disk and prints one markdown table of medians, with each engine's ratio to asyncflow.
Before a peer runs a bigger size of a workload, its cold time is estimated linearly from
the smaller size; above ``--budget`` seconds the size is skipped. ``--one`` is the
child's mode.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import importlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEERS_DIR = HERE / "peers"
VENVS_DIR = Path("~/.cache/asyncflow-bench/venvs")


@dataclass(frozen=True)
class Workload:
    kind: str  # W1 .. W4
    size: int

    @property
    def label(self) -> str:
        if self.kind == "W1":
            return f"W1 Choose({self.size}, {self.size // 2})"
        if self.kind == "W2":
            return f"W2 fan-out {self.size:,}"
        if self.kind == "W3":
            return f"W3 chain {self.size:,}"
        return f"W4 sleepy {self.size}"

    @property
    def has_floor(self) -> bool:
        """W2 and W3 as plain coroutines; W4 only as the anyio floor (floor.sleepy)."""
        return self.kind in ("W2", "W3", "W4")

    @property
    def cache_modes(self) -> tuple[str, ...]:
        """Cold, warm, and for the fan-out a rerun of the root alone over a warm cache."""
        return ("cold", "warm", "root-stale") if self.kind == "W2" else ("cold", "warm")


FULL = [
    Workload("W1", 40),
    Workload("W2", 1_000),
    Workload("W2", 10_000),
    Workload("W2", 100_000),
    Workload("W3", 1_000),
    Workload("W3", 10_000),
    Workload("W4", 200),
]
QUICK = [
    Workload("W1", 20),
    Workload("W2", 1_000),
    Workload("W2", 10_000),
    Workload("W3", 100),
    Workload("W3", 1_000),
    Workload("W4", 200),
]
# The largest size of each workload that peers run (asyncflow and the floors run all).
PEER_MAX = {"W1": 40, "W2": 10_000, "W3": 1_000, "W4": 200}


@dataclass(frozen=True)
class Engine:
    """What is measured: asyncflow, a floor of floor.py, or a peer's script (`peer`)."""

    name: str
    peer: str | None = None  # peers/<peer>_peer.py, installed from peers/<peer>.txt
    variant: str | None = None  # the peer script's --variant; None: its default
    caches: bool = True  # False: runs cold only
    default: bool = True  # False: only when named in --engines

    def runs(self, w: Workload) -> bool:
        """Whether this engine runs workload `w` at its size."""
        if self.name == "naive-cache":  # 100,000 files would cost minutes and not say more
            return w.kind in ("W2", "W3") and w.size <= 10_000
        if self.name == "native":
            return w.kind in ("W2", "W3")
        if self.name in FLOORS:
            return w.has_floor
        if self.peer:
            return w.size <= PEER_MAX[w.kind]
        return True

    def modes(self, w: Workload) -> tuple[str, ...]:
        """The steps of one repeat, in order, on one fresh cache directory."""
        if self.name == "asyncflow":
            return w.cache_modes
        return ("cold", "warm") if self.caches else ("cold",)


FLOORS = ("floor", "native", "naive-cache")
ENGINES = [
    Engine("asyncflow"),
    Engine("floor", caches=False),
    Engine("native", caches=False),
    Engine("naive-cache"),
    Engine("taskproc", "taskproc"),
    Engine("taskproc-thread", "taskproc", "thread", default=False),
    Engine("dask-delayed", "dask", "delayed", caches=False),
    Engine("dask-raw", "dask", "raw", caches=False),
    # Parsl at its fastest: without the DEBUG log its default configuration writes.
    Engine("parsl", "parsl", "nolog"),
    Engine("parsl-log", "parsl", "default", default=False),
    Engine("prefect", "prefect"),
    Engine("prefect-async", "prefect", "async", default=False),
    Engine("checkpoint-tool", "checkpoint_tool"),
]
PEER_NAMES = list(dict.fromkeys(e.peer for e in ENGINES if e.peer))


# The child: one measurement of asyncflow or a floor in a fresh process.


def _expected(kind: str, size: int) -> Any:
    """The root's answer: as for the peers (peers/common.py), but W4's sink returns None."""
    from peers import common

    return None if kind == "W4" else common.expected(kind, size)


def child(
    kind: str, size: int, engine: str, mode: str, cache_dir: str | None, backend: str
) -> dict[str, Any]:
    """Run one workload once in this process and return what was measured."""
    import anyio
    import floor
    import workloads

    # Load what `run_with_stats` imports on first use, so the timing is the run's work,
    # not module loading (a long-lived process has paid for it already).
    importlib.import_module("anyio.to_thread")
    importlib.import_module("asyncflow._cache.store")
    importlib.import_module("asyncflow._scheduler")

    out: dict[str, Any] = {}

    async def main() -> None:
        if engine in FLOORS:
            gc.collect()  # as every child does before its timing (see peers/common.py `settle`)
            t0 = time.perf_counter()
            if engine == "naive-cache":
                assert cache_dir is not None
                value, nodes, run = await floor.run_naive_cache(kind, size, cache_dir, warm=mode == "warm")
            else:
                value, nodes = await floor.run_floor(kind, size, backend if engine == "native" else None)
                run = nodes
            out["wall"] = time.perf_counter() - t0
            out.update(nodes=nodes, run=run, reused=nodes - run)
        else:
            options: dict[str, Any] = {"cache_dir": cache_dir}
            if kind == "W1":
                root: Any = workloads.Choose(size, size // 2)
            elif kind == "W2":
                root = workloads.Sum(size)
            elif kind == "W3":
                root = workloads.Chain(size)
            else:
                root = workloads.SleepySink(size)
                options["rate_limits"] = {"w4": workloads.W4_LIMIT}
            if mode == "root-stale":  # a warm cache with only the root's result removed
                await root.clear(cache_dir=cache_dir)
            gc.collect()
            t0 = time.perf_counter()
            value, stats = await root.run_with_stats(**options)
            out["wall"] = time.perf_counter() - t0
            out.update(nodes=stats.run + stats.reused + stats.failed, run=stats.run, reused=stats.reused)
            out["stats_elapsed"] = stats.elapsed
        out["ok"] = value == _expected(kind, size)
        out["peak"] = floor.PEAK if engine in FLOORS else workloads.PEAK

    anyio.run(main, backend=backend)
    out["rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return out


# Peer virtualenvs: one per peer, built from its requirements file and reused.


@dataclass
class PeerSetup:
    """A peer ready to run (`python`, `script`), or why it cannot (`problem`)."""

    python: Path | None = None
    script: Path | None = None
    venv: Path | None = None
    problem: str | None = None


READY = "asyncflow-bench-ready"  # written last into a complete venv: `pip freeze`


def base_python() -> str:
    """The interpreter this one was made from: inside a venv (nox's), the one under it."""
    return getattr(sys, "_base_executable", None) or sys.executable


def venv_path(peer: str, requirements: Path, venvs: Path) -> Path:
    """``<venvs>/<peer>-<hash of the requirements and the Python version>``."""
    digest = hashlib.sha256(requirements.read_bytes() + platform.python_version().encode())
    return venvs / f"{peer}-{digest.hexdigest()[:10]}"


def pip_problem(log: str) -> str:
    """The first line of a failed ``pip install`` that says why, made short."""
    missing = re.search(r"satisfies the requirement ([\w.\-\[\]]+)==(\S+) \(from versions:", log)
    if missing:
        return f"{missing.group(1)} {missing.group(2)} is not on PyPI"
    errors = [line for line in log.splitlines() if line.startswith("ERROR:")]
    lines = errors or [line for line in log.splitlines() if line.strip()] or ["pip failed"]
    return lines[0].removeprefix("ERROR:").strip()[:160]


def pip_install(python: str, requirements: Path, log_path: Path) -> tuple[int, str]:
    """``pip install -r`` into `python`'s venv, showing what it collects; exit status and log."""
    argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "-r", str(requirements)]
    lines: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(("Collecting", "Successfully installed", "ERROR")):
                print(f"    {line.rstrip()[:150]}", file=sys.stderr)
    log = "".join(lines)
    log_path.write_text(log)
    return proc.returncode, log


def build_venv(venv: Path, requirements: Path) -> str | None:
    """Make `venv` afresh and install `requirements` into it; None, or what went wrong."""
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        [base_python(), "-m", "venv", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        return f"python -m venv failed: {(made.stderr.strip().splitlines() or ['?'])[-1]}"
    python = str(venv / "bin" / "python")
    code, log = pip_install(python, requirements, venv / "pip-install.log")
    if code != 0:
        return pip_problem(log)
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=False)
    (venv / READY).write_text(freeze.stdout)
    return None


def prepare_peer(peer: str, peers_dir: Path, venvs: Path) -> PeerSetup:
    """Find or build `peer`'s venv; then its script must exist."""
    requirements = peers_dir / f"{peer}.txt"
    if not requirements.exists():
        return PeerSetup(problem=f"not installable: no requirements file peers/{requirements.name}")
    venv = venv_path(peer, requirements, venvs)
    if (venv / READY).exists() and (venv / "bin" / "python").exists():
        print(f"venv {peer}: {venv} (reused)", file=sys.stderr)
    else:
        print(f"venv {peer}: building {venv} (pip install -r {requirements}) ...", file=sys.stderr)
        t0 = time.perf_counter()
        problem = build_venv(venv, requirements)
        if problem:
            print(f"  ! {peer} not installable: {problem} (log: {venv}/pip-install.log)", file=sys.stderr)
            return PeerSetup(venv=venv, problem=f"not installable: {problem}")
        print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    script = peers_dir / f"{peer}_peer.py"
    if not script.exists():
        return PeerSetup(venv=venv, problem=f"no adapter: no peers/{script.name}")
    return PeerSetup(python=venv / "bin" / "python", script=script, venv=venv)


# The parent: child processes, repeats, fresh caches, medians, the table.


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under `path` (what ``du`` counts)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        total += os.lstat(dirpath).st_blocks * 512
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


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


PEER_TIMEOUT_BUDGETS = 5


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
    return env


def run_once(engine: Engine, w: Workload, mode: str, cache: Path, ctx: Context) -> dict[str, Any]:
    """One measurement in a fresh process; the result in the harness's keys."""
    what = f"{w.label} {engine.name} {mode}"
    if engine.peer is None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--one", w.kind, str(w.size)]
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


@dataclass
class Samples:
    results: list[dict[str, Any]] = field(default_factory=list)
    disk: list[int] = field(default_factory=list)
    error: str | None = None  # why the last try failed, in a line
    timed_out: bool = False
    cut_short: bool = False  # a peer's first cold run was over the budget: no more repeats

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.results)


def _progress(w: Workload, engine: Engine, mode: str, i: int, result: dict[str, Any]) -> None:
    counts = f", run {result['run']} reused {result['reused']}" if result.get("run") is not None else ""
    print(f"  {w.label} {engine.name} {mode} #{i + 1}: {result['wall']:.3f} s{counts}", file=sys.stderr)


def measure(w: Workload, engine: Engine, repeat: int, ctx: Context) -> dict[str, Samples]:
    """`repeat` times: a fresh cache directory, then each of the engine's modes on it.

    An error stops the repeats. A peer whose first cold run took longer than the budget
    is not repeated.
    """
    modes = engine.modes(w)
    samples = {mode: Samples() for mode in modes}
    for i in range(repeat):
        cache = Path(tempfile.mkdtemp(prefix="afbench-", dir=ctx.tmp))
        try:
            for mode in modes:
                try:
                    result = run_once(engine, w, mode, cache, ctx)
                except ChildError as exc:
                    samples[mode].error = exc.reason
                    samples[mode].timed_out = exc.timed_out
                    print(f"  ! {exc}", file=sys.stderr)
                    return samples
                samples[mode].results.append(result)
                samples[mode].disk.append(disk_usage(cache))
                _progress(w, engine, mode, i, result)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if engine.peer and i + 1 < repeat and samples["cold"].results[0]["wall"] > ctx.budget:
            for s in samples.values():
                s.cut_short = True
            print(f"  {engine.name}: over the budget of {ctx.budget:g} s, not repeated", file=sys.stderr)
            break
    return samples


def over_budget(
    engine: Engine, w: Workload, known: dict[tuple[str, str], tuple[int, float]], budget: float
) -> str | None:
    """Why a peer should not run `w`: its cold time, scaled from a smaller size, is too long."""
    base = known.get((engine.name, w.kind))
    if engine.peer is None or base is None or base[0] >= w.size:
        return None
    size, seconds = base
    estimate = seconds * w.size / size
    if estimate <= budget:
        return None
    return (
        f"skipped: ~{estimate:,.0f} s per cold run estimated from {size:,} "
        f"(budget {budget:g} s; --budget to change)"
    )


def cold_seconds(samples: dict[str, Samples], timeout: float) -> float | None:
    """The median cold wall time, the timeout if it timed out, None if unknown."""
    cold = samples.get("cold")
    if cold is None:
        return None
    if cold.results:
        return cold.median("wall")
    return timeout if cold.timed_out else None  # at least: the timeout itself


# The table.


@dataclass
class Case:
    """One row: an engine's mode at one workload, measured (`samples`) or not (`why`)."""

    engine: Engine
    mode: str
    samples: Samples | None = None
    why: str = ""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


CHILDREN_RSS_NOTE_KB = 4 * 1024  # a peer's subprocesses bigger than this are noted


def _note_parts(notes: str) -> list[str]:
    return [part.strip() for part in notes.split("; ") if part.strip()]


def common_notes(cases: list[Case]) -> dict[str, list[str]]:
    """Per peer engine, the parts of its script's notes found in every one of its results.

    They are printed once under the table instead of on every row.
    """
    parts: dict[str, list[list[str]]] = {}
    for case in cases:
        for r in case.samples.results if case.engine.peer and case.samples else []:
            parts.setdefault(case.engine.name, []).append(_note_parts(r.get("notes") or ""))
    return {
        name: [part for part in lists[0] if all(part in other for other in lists[1:])]
        for name, lists in parts.items()
    }


def notes_for(w: Workload, case: Case, wall: float, shared: list[str]) -> list[str]:
    """What a reader must know about one measured row, besides its numbers.

    `shared`: notes of the engine's script said on every row, left out here.
    """
    import workloads

    s, mode, engine = case.samples, case.mode, case.engine
    assert s is not None
    notes: list[str] = []
    if not engine.caches and (engine.peer or engine.name in FLOORS):
        notes.append("no cache")
    if not all(r["ok"] for r in s.results):
        got = sorted({r.get("result", "?") for r in s.results if not r["ok"]})
        notes.append("WRONG RESULT" + (f" {', '.join(map(str, got))[:60]}" if engine.peer else ""))
    if s.error:
        notes.append(f"{len(s.results)} ok, then ERROR {s.error}")
    if s.cut_short:
        notes.append("1 run only: over the budget")
    runs = [(r["run"], r["reused"]) for r in s.results if r.get("run") is not None]
    if mode == "cold" and any(b for _, b in runs):
        notes.append("cold reused nodes?")
    if mode == "warm" and any(a for a, _ in runs):
        clean = [r["wall"] for r in s.results if r.get("run") == 0]
        notes.append(
            f"{len(s.results) - len(clean)} of {len(s.results)} warm runs re-ran nodes (executed > 0)"
            + (f"; clean warm median {statistics.median(clean):.3f} s" if clean else "")
        )
    if mode == "root-stale" and any(a != 1 for a, _ in runs):
        notes.append("expected exactly the root to run")
    if w.kind == "W4" and mode == "cold":
        ideal = w.size * workloads.W4_SLEEP / workloads.W4_LIMIT
        peaks = sorted({r["peak"] for r in s.results if r.get("peak") is not None})
        notes.append(
            f"ideal {ideal:.2f} s ({(wall - ideal) * 1000:+,.0f} ms); peak concurrency "
            f"{'/'.join(map(str, peaks)) or '?'} (limit {workloads.W4_LIMIT})"
        )
    children = max((r.get("rss_children_kb") or 0) for r in s.results)
    if engine.peer and children > CHILDREN_RSS_NOTE_KB:
        notes.append(f"subprocesses peak RSS {children / 1024:.0f} MiB")
    # Notes that differ per run (a split of the time, a server's start-up): the median run's.
    middle = sorted(s.results, key=lambda r: r["wall"])[len(s.results) // 2]
    notes += [part for part in _note_parts(middle.get("notes") or "") if part not in shared]
    return notes


def _counts(case: Case) -> str:
    assert case.samples is not None
    runs = sorted({(r["run"], r["reused"]) for r in case.samples.results if r.get("run") is not None})
    if not runs or (case.engine.name in FLOORS and not case.engine.caches):
        return ""
    return ", ".join(f"{a}/{b}" for a, b in runs)


def _ratio(wall: float, other: float | None) -> str:
    if not other:
        return ""
    return f"{wall / other:.2f}x" if wall / other < 10 else f"{wall / other:.1f}x"


def rows_for(w: Workload, cases: list[Case], shared: dict[str, list[str]]) -> list[list[str]]:
    """The table's rows for workload `w`, in the order of `cases`; `shared`: see `common_notes`."""

    def median_wall(engine: str, mode: str) -> float | None:
        for c in cases:
            if c.engine.name == engine and c.mode == mode and c.samples and c.samples.results:
                return c.samples.median("wall")
        return None

    floor_wall = median_wall("floor", "cold")
    rows: list[list[str]] = []
    for case in cases:
        s = case.samples
        if s is None or not s.results:
            why = case.why or (s.error if s and s.error else "not run: an earlier step failed")
            mark = "ERROR" if s and s.error else "-"
            rows.append([w.label, case.engine.name, "", case.mode, mark, "", "", "", "", "", "", "", why])
            continue
        wall = s.median("wall")
        walls = [r["wall"] for r in s.results]
        nodes = s.results[0]["nodes"]
        name = case.engine.name
        vs_floor = _ratio(wall, floor_wall) if name == "asyncflow" or name in FLOORS else ""
        vs_asyncflow = "" if name == "asyncflow" else _ratio(wall, median_wall("asyncflow", case.mode))
        rows.append(
            [
                w.label,
                name,
                f"{nodes:,}",
                case.mode,
                f"{wall:.3f}",
                f"{min(walls):.3f}-{max(walls):.3f}",
                f"{wall / nodes * 1e6:,.0f}",
                f"{s.median('rss_kb') / 1024:.0f}",
                _size(statistics.median(s.disk)) if s.disk and case.engine.caches else "",
                _counts(case),
                vs_floor,
                vs_asyncflow,
                "; ".join(notes_for(w, case, wall, shared.get(name, []))),
            ]
        )
    return rows


HEADER = [
    "workload",
    "engine",
    "nodes",
    "mode",
    "wall s",
    "min-max s",
    "us/node",
    "RSS MiB",
    "cache",
    "run/reused",
    "vs floor",
    "vs asyncflow",
    "notes",
]
RIGHT = {2, 4, 5, 6, 7, 8, 10, 11}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in RIGHT else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in RIGHT else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(HEADER), sep, *(line(r) for r in rows)])


def engine_state() -> str:
    """The commit and a hash of asyncflow's sources, to tell which engine was measured."""
    package = HERE.parent / "asyncflow"
    digest = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "asyncflow"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "?", ""
    return f"commit {commit}{' + uncommitted changes' if dirty else ''}, sources {digest.hexdigest()[:10]}"


def peer_versions(cases: list[Case]) -> str:
    """``name version`` of everything the peers' scripts reported, in the order seen."""
    seen: dict[str, str] = {}
    for case in cases:
        for r in case.samples.results if case.samples else []:
            for name, version in (r.get("versions") or {}).items():
                if name.lower() == "python" and version == platform.python_version():
                    continue
                seen.setdefault(f"{name} {version}", "")
    return ", ".join(seen)


# The command line.


def select_engines(args: argparse.Namespace) -> list[Engine]:
    """The engines to run, in the table's order: --engines, else the defaults (less peers)."""
    by_name = {e.name: e for e in ENGINES}
    if args.engines:
        wanted: set[str] = set()
        for name in args.engines:
            matches = [e.name for e in ENGINES if name in (e.name, e.peer)]
            if not matches:
                known = f"{', '.join(by_name)} (or a peer: {', '.join(PEER_NAMES)})"
                sys.exit(f"unknown engine {name!r}; known: {known}")
            wanted |= {m for m in matches if by_name[m].default or m == name}
        return [e for e in ENGINES if e.name in wanted]
    if args.no_peers:
        return [e for e in ENGINES if e.default and e.peer is None]
    if args.peers:
        unknown = set(args.peers) - set(PEER_NAMES) - {e.name for e in ENGINES if e.peer}
        if unknown:
            sys.exit(f"unknown peer(s) {', '.join(sorted(unknown))}; known: {', '.join(PEER_NAMES)}")
        return [
            e
            for e in ENGINES
            if e.default and (e.peer is None or e.peer in args.peers or e.name in args.peers)
        ]
    return [e for e in ENGINES if e.default]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat, budget 30 s")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--repeat", type=int, help="measurements per case (default 3; --quick 1)")
    parser.add_argument("--peer-repeat", type=int, help="measurements per case for peers (default: --repeat)")
    parser.add_argument("--only", nargs="+", metavar="W", help="run only these workloads (W1 .. W4)")
    parser.add_argument(
        "--engines",
        nargs="+",
        metavar="E",
        help=f"run only these engines: {', '.join(e.name for e in ENGINES)}, or a peer's name for its variants",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        metavar="P",
        help=f"asyncflow, the floors and these peers: {', '.join(PEER_NAMES)}",
    )
    parser.add_argument("--no-peers", action="store_true", help="asyncflow and the floors only")
    parser.add_argument(
        "--budget",
        type=float,
        help="skip a peer's bigger size whose estimated cold run is longer, and stop a peer's run "
        "after 5 times this (s; default 120, --quick 30)",
    )
    parser.add_argument(
        "--venvs",
        type=Path,
        default=VENVS_DIR,
        help=f"where the peers' virtualenvs live (default {VENVS_DIR})",
    )
    parser.add_argument("--tmp", type=Path, help="where to make the cache directories (default: $TMPDIR)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one child may take")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="asyncflow", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["cold", "warm", "root-stale"], help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_all(
    chosen: list[Workload], engines: list[Engine], repeat: int, peer_repeat: int, ctx: Context
) -> list[tuple[Workload, list[Case]]]:
    """Every engine on every workload it runs, in order; a case for each row of the table."""
    measured: list[tuple[Workload, list[Case]]] = []
    known: dict[tuple[str, str], tuple[int, float]] = {}  # (engine, kind): (size, cold seconds)
    for w in chosen:
        print(f"{w.label} ...", file=sys.stderr)
        cases: list[Case] = []
        for e in (e for e in engines if e.runs(w)):
            setup = ctx.peers.get(e.peer) if e.peer else None
            why = (setup.problem if setup else None) or over_budget(e, w, known, ctx.budget)
            if why:
                print(f"  {e.name}: {why}", file=sys.stderr)
                cases.append(Case(e, "-", why=why))
                continue
            samples = measure(w, e, peer_repeat if e.peer else repeat, ctx)
            cases += [Case(e, mode, s) for mode, s in samples.items()]
            seconds = cold_seconds(samples, ctx.timeout_for(e))
            if seconds is not None:
                known[(e.name, w.kind)] = (w.size, seconds)
        measured.append((w, cases))
    return measured


def main() -> None:
    args = parse_args()
    if args.one:
        kind, size = args.one[0], int(args.one[1])
        print(json.dumps(child(kind, size, args.engine, args.mode, args.cache_dir, args.backend)))
        return

    repeat = args.repeat or (1 if args.quick else 3)
    peer_repeat = args.peer_repeat or repeat
    engines = select_engines(args)
    chosen = [w for w in (QUICK if args.quick else FULL) if not args.only or w.kind in args.only]
    started = time.perf_counter()
    engine = engine_state()
    venvs = args.venvs.expanduser()
    peer_names = dict.fromkeys(e.peer for e in engines if e.peer)  # each once, in order
    peers = {peer: prepare_peer(peer, args.peers_dir, venvs) for peer in peer_names}
    budget = args.budget or (30.0 if args.quick else 120.0)
    measured = run_all(
        chosen, engines, repeat, peer_repeat, Context(args.backend, args.timeout, args.tmp, budget, peers)
    )
    every_case = [case for _, cases in measured for case in cases]
    shared = common_notes(every_case)
    import asyncflow

    print(
        f"asyncflow {asyncflow.__version__}, Python {platform.python_version()}, "
        f"backend {args.backend}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"{datetime.date.today()}, median of {repeat}"
        + (f" (peers: of {peer_repeat})" if peers and peer_repeat != repeat else "")
        + f"{' (quick)' if args.quick else ''}, {time.perf_counter() - started:.0f} s in all"
    )
    print(f"engine: {engine}")
    if peers:
        versions = peer_versions(every_case) or "none ran"
        print(f"peers: {versions}; budget {budget:g} s per run; venvs in {venvs}")
    now = engine_state()
    if now.split("sources ")[-1] != engine.split("sources ")[-1]:  # a commit alone changes nothing
        print(f"WARNING: asyncflow changed while measuring (now {now}); rerun")
    print()
    print(table([row for w, cases in measured for row in rows_for(w, cases, shared)]))
    if any(shared.values()):
        print("\nWhat the peers' scripts say on every row of theirs:\n")
        for name, parts in shared.items():
            if parts:
                print(f"- {name}: {'; '.join(parts)}")


if __name__ == "__main__":
    main()
