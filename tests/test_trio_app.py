"""examples/trio_app.py: the workflow from a trio program, rate limit and cancel scope."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trio")

APP = Path(__file__).resolve().parent.parent / "examples" / "trio_app.py"
N = 8


def _run_app(cache_dir: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, str(APP), str(cache_dir)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines())


def test_trio_app_rate_limit_and_cancel_scope(tmp_path: Path) -> None:
    facts = _run_app(tmp_path / "cache")
    # The trio cancel scope cut the first run short, cleanly: no body left running,
    # the finished Fetch results kept, the unfinished ones and Summary not stored.
    assert facts["cancelled"] == "True"
    kept = [int(i) for i in facts["kept"].split(",") if i]
    assert 0 < len(kept) < N, kept
    assert facts["active_after_cancel"] == "0"
    assert facts["summary_cached_after_cancel"] == "False"
    # The "net" channel's limit of 2 held, and was reached, in both runs.
    assert facts["peak_first"] == "2"
    assert facts["peak_second"] == "2"
    # The second run reused exactly what the cancelled one kept and ran the rest.
    assert int(facts["value"]) == sum(i * i for i in range(N))
    assert int(facts["fetch_reused"]) == len(kept)
    assert int(facts["fetch_run"]) == N - len(kept)
    assert facts["summary_run"] == "1"
    # A third run has nothing to do.
    assert facts["third_run"] == "0"
    assert facts["third_reused"] == str(N + 1)


def test_trio_app_cache_survives_a_second_process(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _run_app(cache_dir)
    facts = _run_app(cache_dir)  # everything is cached already: the deadline cancels nothing
    assert facts["kept"] == ",".join(map(str, range(N)))
    assert facts["peak_first"] == "0"  # cached nodes never take a rate-limit slot
    assert facts["fetch_run"] == "0"
    assert facts["fetch_reused"] == str(N)
