"""Measuring: the repeats of one engine on one workload, each on a fresh cache directory.

`measure` runs every mode of an engine (cold, warm, root-stale, and for asyncflow the
same as a fresh process's first run: see suite.py) `repeat` times and
collects the results and the cache's size on disk (`Samples`), printing progress to
stderr; `over_budget` and `cold_seconds` decide whether a peer runs a bigger size.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from children import ChildError, Context, run_once
from suite import Engine, Workload, base_mode


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under `path` (what ``du`` counts)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        total += os.lstat(dirpath).st_blocks * 512
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


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

    Every cold mode starts on an empty cache: the directory is emptied before a cold mode
    that is not the first (asyncflow's first-run view follows its long-lived one).

    An error stops the repeats. A peer whose first cold run took longer than the budget
    is not repeated.
    """
    modes = engine.modes(w)
    samples = {mode: Samples() for mode in modes}
    for i in range(repeat):
        cache = Path(tempfile.mkdtemp(prefix="afbench-", dir=ctx.tmp))
        try:
            for mode in modes:
                if base_mode(mode) == "cold" and mode != modes[0]:
                    shutil.rmtree(cache)
                    cache.mkdir()
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
