"""Bodies on a real Dask cluster: a `LocalCluster` with two worker processes, started here.

Checks results, a cached rerun, failures, task names in the scheduler, the run history
(place, job, output), cancellation, ``max_workers`` and classes that travel by value. Skips without dask.distributed, unless
ASYNCFLOW_REQUIRE_SERVICES=1 (then it fails).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from asyncflow import Dask, OptionError
from tests import engine_tasks
from tests.service_env import REQUIRED

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Imported by the fixture, not here: distributed installs tblib's pickling for every
# exception class defined when it is imported, which changes how asyncflow's errors pickle
# for the rest of the session (test_errors.py checks the default).
pytestmark = pytest.mark.skipif(
    not REQUIRED and importlib.util.find_spec("distributed") is None,
    reason="needs dask.distributed: pip install 'asyncflow[dask]'",
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import distributed

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: other test runs may hold 8787
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


def scheduler_keys(dask_scheduler: Any) -> list[str]:
    return [str(key) for key in dask_scheduler.tasks if str(key).startswith("Sleeper(")]


async def test_results_and_a_cached_rerun(cache_dir: Path, client: Any) -> None:
    await engine_tasks.check_results_and_cached_rerun(cache_dir, Dask(client))


async def test_a_bare_client_as_executor(cache_dir: Path, client: Any) -> None:
    await engine_tasks.check_results_and_cached_rerun(cache_dir, client)


async def test_an_address_connects_and_disconnects(cache_dir: Path, client: Any) -> None:
    clients_before = len(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))
    await engine_tasks.check_results_and_cached_rerun(cache_dir, Dask(client.scheduler.address))

    def clients() -> int:
        return len(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))

    with anyio.fail_after(10):
        while await anyio.to_thread.run_sync(clients) > clients_before:  # noqa: ASYNC110 - the scheduler's state
            await anyio.sleep(0.1)


async def test_per_channel(cache_dir: Path, client: Any) -> None:
    await engine_tasks.check_per_channel(cache_dir, Dask(client))


async def test_a_failing_body_is_named(cache_dir: Path, client: Any) -> None:
    await engine_tasks.check_failure_named(cache_dir, Dask(client))


async def test_the_history_says_where_a_body_ran_and_what_it_printed(
    cache_dir: Path, tmp_path: Path, client: Any
) -> None:
    # The job: the key the scheduler knows the body by, the task's name and a token.
    job = r"key (Talks\(3\)|Breaks\(\))-[0-9a-f]{32}"
    await engine_tasks.check_history(
        cache_dir, tmp_path, Dask(client), f"dask: {client.scheduler.address}", job
    )


async def test_max_workers(cache_dir: Path, tmp_path: Path, client: Any) -> None:
    await engine_tasks.check_max_workers(cache_dir, tmp_path, Dask(client))


async def test_a_taskfile_class_travels(cache_dir: Path, tmp_path: Path, client: Any) -> None:
    await engine_tasks.check_taskfile_travels(cache_dir, tmp_path, Dask(client))


async def test_cancellation_leaves_nothing_queued_or_processing(
    cache_dir: Path, tmp_path: Path, client: Any
) -> None:
    keys: list[str] = []

    def while_running() -> None:
        keys.extend(client.run_on_scheduler(scheduler_keys))

    await engine_tasks.cancel_while_sleeping(cache_dir, tmp_path, Dask(client), 5, 1.5, while_running)
    # The scheduler knows each body by its task's name.
    assert any(key.startswith(f"Sleeper(0, {str(tmp_path)!r}, 1.5)-") for key in keys), keys
    deadline = time.monotonic() + 10
    while any(client.processing().values()) or await anyio.to_thread.run_sync(
        client.run_on_scheduler, scheduler_keys
    ):
        assert time.monotonic() < deadline, (client.processing(), client.run_on_scheduler(scheduler_keys))
        await anyio.sleep(0.1)
    # The two running bodies finish in their threads (Dask cannot stop a thread); the
    # queued ones never start.
    await anyio.sleep(2.5)
    assert engine_tasks.started(tmp_path) == 2
    assert all(name.startswith("Sleeper(") for name in engine_tasks.names(tmp_path))


def test_placement_checks() -> None:
    with pytest.raises(OptionError, match=r"Dask\(3\): expected a distributed.Client"):
        Dask(3)  # type: ignore[arg-type]
    assert Dask("tcp://h:8786").address == "tcp://h:8786"


async def test_missing_dask_names_the_extra(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "asyncflow._runners.dask_cluster", raising=False)
    with pytest.raises(OptionError, match=r"pip install 'asyncflow\[dask\]'"):  # not in a group
        await engine_tasks.Square(2).run(cache_dir=cache_dir, executor=Dask("tcp://nowhere:8786"))


def test_importing_asyncflow_imports_neither_dask_nor_ray() -> None:
    code = "import asyncflow, sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'ray'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


async def test_big_values_go_by_file_on_this_machine(cache_dir: Path, client: Any) -> None:
    await engine_tasks.check_big_values_by_file(cache_dir, Dask(client))
