"""Bodies on a real local Ray instance (two CPUs), started here once for the module.

Checks results, a cached rerun, failures, task names in Ray's state, the run history
(place, job, output), cancellation (force: the running bodies' workers are killed),
``max_workers`` and classes that travel by value. Ray is heavy: these tests run on
Python 3.11 only, and skip without ray unless ASYNCFLOW_REQUIRE_SERVICES=1 (then they
fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from asyncflow import OptionError, Ray, Task, TaskFailedError
from tests import engine_tasks
from tests.service_env import REQUIRED

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

if sys.version_info[:2] != (3, 11):
    pytest.skip("Ray's tests run on Python 3.11 only (Ray is heavy)", allow_module_level=True)
if REQUIRED:
    import ray
else:
    ray = pytest.importorskip("ray", reason="needs ray: pip install 'asyncflow[ray]'")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield
    ray.shutdown()


async def test_results_and_a_cached_rerun(cache_dir: Path) -> None:
    await engine_tasks.check_results_and_cached_rerun(cache_dir, Ray())


async def test_per_channel(cache_dir: Path) -> None:
    await engine_tasks.check_per_channel(cache_dir, Ray())


async def test_a_failing_body_is_named(cache_dir: Path) -> None:
    await engine_tasks.check_failure_named(cache_dir, Ray())


async def test_the_history_says_where_a_body_ran_and_what_it_printed(cache_dir: Path, tmp_path: Path) -> None:
    await engine_tasks.check_history(cache_dir, tmp_path, Ray(), "ray: local", "ray task [0-9a-f]+")


async def test_max_workers(cache_dir: Path, tmp_path: Path) -> None:
    await engine_tasks.check_max_workers(cache_dir, tmp_path, Ray())


async def test_a_taskfile_class_travels(cache_dir: Path, tmp_path: Path) -> None:
    await engine_tasks.check_taskfile_travels(cache_dir, tmp_path, Ray())


def busy_cpus() -> float:
    """The CPUs Ray counts as taken: a running task holds one, a queued one none."""
    return float(ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0))


async def test_cancellation_kills_running_and_queued_bodies(cache_dir: Path, tmp_path: Path) -> None:
    # Ray's state API needs its dashboard (ray[default]): Ray's account of its CPUs and the
    # bodies' own reports say what runs instead.
    busy: list[float] = []

    def both_busy() -> None:  # Ray updates its account a moment after a body starts
        deadline = time.monotonic() + 2
        while busy_cpus() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy.append(busy_cpus())

    await engine_tasks.cancel_while_sleeping(cache_dir, tmp_path, Ray(), 4, 5.0, both_busy)
    assert busy == [2]  # both running bodies held a CPU before the cancel
    started = engine_tasks.names(tmp_path)
    assert len(started) == 2
    assert started <= {f"Sleeper({i}, {str(tmp_path)!r}, 5.0)" for i in range(4)}, started
    # Right after: every CPU is free again, and the workers that ran the bodies are gone.
    with anyio.fail_after(10):
        while await anyio.to_thread.run_sync(busy_cpus) or any(  # noqa: ASYNC110 - Ray's state
            map(engine_tasks.running, engine_tasks.pids(tmp_path))
        ):
            await anyio.sleep(0.1)
    # Nothing runs on: no running body ends (they would have by now), and no queued body starts.
    await anyio.sleep(5)
    assert engine_tasks.ended(tmp_path) == 0
    assert engine_tasks.started(tmp_path) == 2
    assert await anyio.to_thread.run_sync(busy_cpus) == 0


class Crash(Task):
    def run_task(self) -> int:
        os._exit(3)


async def test_a_crashed_worker_is_named(cache_dir: Path) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await Crash().run(cache_dir=cache_dir, executor=Ray())
    assert str(info.value).startswith("Crash() failed: ray: local gave no answer: "), str(info.value)
    assert info.value.task == "Crash()"


def test_placement_checks() -> None:
    with pytest.raises(OptionError, match=r"Ray\(num_cpus=-1\): expected a number >= 0"):
        Ray(num_cpus=-1)
    with pytest.raises(OptionError, match=r"Ray\(resources="):
        Ray(resources={"gpu_big": "1"})  # type: ignore[dict-item]
    assert Ray(resources={"a": 1}) == Ray(resources={"a": 1})
    assert len({Ray(), Ray(), Ray(address="auto")}) == 2


async def test_missing_ray_names_the_extra(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "asyncflow._runners.ray_cluster", raising=False)
    with pytest.raises(OptionError, match=r"pip install 'asyncflow\[ray\]'"):
        await engine_tasks.Square(2).run(cache_dir=cache_dir, executor=Ray())


RAY_SCRIPT = """
import os
import subprocess
import sys

import ray

from asyncflow import Ray, Task


class Cube(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i**3


if __name__ == "__main__":
    print(Cube(3).run_graph(cache_dir=sys.argv[1], executor=Ray()), ray.is_initialized())
"""


def test_a_run_starts_and_stops_its_own_ray(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(RAY_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["27", "False"]  # from __main__, by value; Ray shut down after


async def test_big_values_go_by_file_on_this_machine(cache_dir: Path) -> None:
    await engine_tasks.check_big_values_by_file(cache_dir, Ray())
