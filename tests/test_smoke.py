"""The example that ships with the package: the binomial DAG, run as the README shows."""

from __future__ import annotations

import subprocess
import sys
from math import comb
from pathlib import Path

from asyncflow.examples.binomial import Choose


async def test_choose(cache_dir: Path) -> None:
    assert await Choose(6, 3).run(cache_dir=cache_dir) == 20
    value, stats = await Choose(12, 5).run_with_stats(cache_dir=cache_dir)
    assert value == comb(12, 5)
    assert stats.reused == 15  # the part of Choose(6, 3)'s graph it shares


def test_example_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncflow.examples.binomial", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    first, second = done.stdout.splitlines()
    assert first.startswith("first run: Choose(40, 20) = 137846528820  (440 run, 0 from cache")
    assert second.startswith("second run: Choose(40, 20) = 137846528820  (0 run, 440 from cache")
