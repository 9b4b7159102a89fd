"""Benchmark harness: time asyncflow's workloads cold and warm, each run in a fresh process.

    python benchmarks/run.py [--quick] [--backend asyncio|trio] [--repeat N] [--only W2 ...]

For every workload and repeat, a fresh temporary cache directory is made; one child
process runs the workload cold (empty cache), a second child runs it again warm (same
cache, everything reusable); for W2 a third clears the root's result and runs again
(root-stale: one node runs, reading every leaf from the cache). W2 and W3 are also run
as plain coroutines (floor.py) for the event-loop floor, with anyio's task group and
with the backend's own (native). Each child times the run call itself (not interpreter start or
imports) and reports its peak RSS; the parent measures the cache on disk and prints a
markdown table of medians. ``--one`` is the child's mode.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import resource
import shutil
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
        return self.kind in ("W2", "W3")

    @property
    def cache_modes(self) -> tuple[str, ...]:
        """Cold, warm, and for the fan-out a rerun of the root alone over a warm cache."""
        return ("cold", "warm", "root-stale") if self.kind == "W2" else ("cold", "warm")


FULL = [
    Workload("W1", 40),
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


# The child: one measurement in a fresh process.


def _expected(kind: str, size: int) -> Any:
    if kind == "W1":
        from math import comb

        return comb(size, size // 2)
    if kind == "W2":
        return size * (size - 1) // 2
    if kind == "W3":
        return size
    return None


def child(kind: str, size: int, mode: str, cache_dir: str | None, backend: str) -> dict[str, Any]:
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
        if mode in ("floor", "native"):
            t0 = time.perf_counter()
            value, nodes = await floor.run_floor(kind, size, backend if mode == "native" else None)
            out["wall"] = time.perf_counter() - t0
            out.update(nodes=nodes, run=nodes, reused=0)
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
            t0 = time.perf_counter()
            value, stats = await root.run_with_stats(**options)
            out["wall"] = time.perf_counter() - t0
            out.update(nodes=stats.run + stats.reused + stats.failed, run=stats.run, reused=stats.reused)
            out["stats_elapsed"] = stats.elapsed
        out["ok"] = value == _expected(kind, size)
        out["peak"] = workloads.PEAK

    anyio.run(main, backend=backend)
    out["rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return out


# The parent: repeats, fresh caches, medians, the table.


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under `path` (what ``du`` counts)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        total += os.lstat(dirpath).st_blocks * 512
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


class ChildError(Exception):
    pass


def spawn(w: Workload, mode: str, cache_dir: Path | None, backend: str, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", w.kind, str(w.size), "--mode", mode]
    argv += ["--backend", backend]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    env = {k: v for k, v in os.environ.items() if k not in ("AF_CACHE_DIR", "AF_DETECT_SOURCE_CHANGE")}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ChildError(f"{w.label} {mode}: timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ChildError(f"{w.label} {mode}: exit status {proc.returncode}\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@dataclass
class Samples:
    results: list[dict[str, Any]] = field(default_factory=list)
    disk: list[int] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.results)


def measure(w: Workload, repeat: int, backend: str, tmp: Path | None, timeout: float) -> dict[str, Samples]:
    samples = {mode: Samples() for mode in w.cache_modes}
    if w.has_floor:
        samples["floor"] = Samples()
        samples["native"] = Samples()
    for i in range(repeat):
        cache = Path(tempfile.mkdtemp(prefix="afbench-", dir=tmp))
        try:
            for mode in w.cache_modes:
                if samples[mode].error:
                    continue
                try:
                    result = spawn(w, mode, cache, backend, timeout)
                except ChildError as exc:
                    samples[mode].error = str(exc)
                    print(f"  ! {exc}", file=sys.stderr)
                    break
                samples[mode].results.append(result)
                samples[mode].disk.append(disk_usage(cache))
                print(
                    f"  {w.label} {mode} #{i + 1}: {result['wall']:.3f} s, "
                    f"run {result['run']} reused {result['reused']}",
                    file=sys.stderr,
                )
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        for mode in ("floor", "native"):
            if mode not in samples or samples[mode].error:
                continue
            try:
                result = spawn(w, mode, None, backend, timeout)
                samples[mode].results.append(result)
                print(f"  {w.label} {mode} #{i + 1}: {result['wall']:.3f} s", file=sys.stderr)
            except ChildError as exc:
                samples[mode].error = str(exc)
                print(f"  ! {exc}", file=sys.stderr)
    return samples


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def rows_for(w: Workload, samples: dict[str, Samples]) -> list[list[str]]:
    import workloads

    floor = samples.get("floor")
    floor_wall = floor.median("wall") if floor and floor.results else None
    rows: list[list[str]] = []
    for mode, s in samples.items():
        if not s.results:
            why = s.error.splitlines()[0] if s.error else "not run: an earlier step of the same cache failed"
            rows.append([w.label, "", mode, "ERROR" if s.error else "-", "", "", "", "", "", "", why])
            continue
        wall = s.median("wall")
        walls = [r["wall"] for r in s.results]
        nodes = s.results[0]["nodes"]
        notes: list[str] = []
        if not all(r["ok"] for r in s.results):
            notes.append("WRONG RESULT")
        if s.error:
            notes.append(f"{len(s.results)} ok, then error")
        runs = sorted({(r["run"], r["reused"]) for r in s.results})
        counts = ", ".join(f"{a}/{b}" for a, b in runs) if mode in w.cache_modes else ""
        if mode == "cold" and any(b for _, b in runs):
            notes.append("cold reused nodes?")
        if mode == "warm" and any(a for a, _ in runs):
            clean = [r["wall"] for r in s.results if r["run"] == 0]
            notes.append(
                f"{len(s.results) - len(clean)} of {len(s.results)} warm runs re-ran nodes the cold run "
                "did not keep" + (f"; clean warm median {statistics.median(clean):.3f} s" if clean else "")
            )
        if mode == "root-stale" and any(a != 1 for a, _ in runs):
            notes.append("expected exactly the root to run")
        if w.kind == "W4" and mode == "cold":
            ideal = w.size * workloads.W4_SLEEP / workloads.W4_LIMIT
            peaks = sorted({r["peak"] for r in s.results})
            notes.append(
                f"ideal {ideal:.2f} s (+{(wall - ideal) * 1000:.0f} ms); peak concurrency "
                f"{'/'.join(map(str, peaks))} (limit {workloads.W4_LIMIT})"
            )
        ratio = f"{wall / floor_wall:.2f}x" if floor_wall else ""
        rows.append(
            [
                w.label,
                f"{nodes:,}",
                mode,
                f"{wall:.3f}",
                f"{min(walls):.3f}-{max(walls):.3f}",
                f"{wall / nodes * 1e6:,.0f}",
                f"{s.median('rss_kb') / 1024:.0f}",
                _size(statistics.median(s.disk)) if s.disk else "",
                counts,
                ratio,
                "; ".join(notes),
            ]
        )
    return rows


HEADER = [
    "workload",
    "nodes",
    "mode",
    "wall s",
    "min-max s",
    "us/node",
    "RSS MiB",
    "cache",
    "run/reused",
    "vs floor",
    "notes",
]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    right = {1, 3, 4, 5, 6, 7, 9}

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(HEADER), sep, *(line(r) for r in rows)])


def engine_state() -> str:
    """The commit and a hash of asyncflow's sources, to tell which engine was measured."""
    import hashlib

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, smaller sizes")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--repeat", type=int, help="measurements per case (default 3; --quick 1)")
    parser.add_argument("--only", nargs="+", metavar="W", help="run only these workloads (W1 .. W4)")
    parser.add_argument("--tmp", type=Path, help="where to make the cache directories (default: $TMPDIR)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one child may take")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--mode", choices=["cold", "warm", "root-stale", "floor", "native"], help=argparse.SUPPRESS
    )
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        kind, size = args.one[0], int(args.one[1])
        print(json.dumps(child(kind, size, args.mode, args.cache_dir, args.backend)))
        return

    repeat = args.repeat or (1 if args.quick else 3)
    chosen = [w for w in (QUICK if args.quick else FULL) if not args.only or w.kind in args.only]
    started = time.perf_counter()
    engine = engine_state()
    rows: list[list[str]] = []
    for w in chosen:
        print(f"{w.label} ...", file=sys.stderr)
        rows.extend(rows_for(w, measure(w, repeat, args.backend, args.tmp, args.timeout)))
    import asyncflow

    print(
        f"asyncflow {asyncflow.__version__}, Python {platform.python_version()}, "
        f"backend {args.backend}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"{datetime.date.today()}, median of {repeat}"
        f"{' (quick)' if args.quick else ''}, {time.perf_counter() - started:.0f} s in all"
    )
    print(f"engine: {engine}")
    if engine_state() != engine:
        print(f"WARNING: asyncflow changed while measuring (now {engine_state()}); rerun")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
