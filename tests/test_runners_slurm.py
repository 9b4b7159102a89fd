"""Bodies as real Slurm jobs: srun and sbatch styles, output, errors, cancellation."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from asyncflow import OptionError, RequiresList, Slurm, Task, TaskFailedError
from asyncflow._cache.store import attempts_of_node, read_log

from .service_env import requires_slurm

pytestmark = [pytest.mark.slurm, requires_slurm]

SRUN = Slurm(time="00:05:00")
SBATCH = Slurm(time="00:05:00", style="sbatch")


def squeue_names() -> list[str]:
    done = subprocess.run(
        ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=10, check=True
    )
    return [n for n in done.stdout.split() if n.startswith("asyncflow-")]


class OnNode(Task, channel="cluster"):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> dict[str, object]:
        print(f"job {self.i} says hello", flush=True)
        return {"i": self.i, "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID")}


class Many(Task):
    parts: RequiresList[dict[str, object]]

    def build_task(self, n: int) -> None:
        self.parts = [OnNode(i) for i in range(n)]

    async def run_task(self) -> list[object]:
        return [p["job"] for p in self.parts]


@pytest.mark.parametrize("slurm", [SRUN, SBATCH], ids=["srun", "sbatch"])
async def test_bodies_run_as_slurm_jobs(
    cache_dir: Path, slurm: Slurm, capfd: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(90):
        jobs = await Many(3).run(cache_dir=cache_dir, prefixes={"cluster": slurm})
    assert all(job is not None for job in jobs)
    assert len(set(jobs)) == 3  # three jobs
    out, _ = capfd.readouterr()
    assert "[OnNode(1)] job 1 says hello" in out
    # The run's history says where each body ran and keeps what it printed.
    (attempt,) = await attempts_of_node(cache_dir, OnNode(1).__af_key__, 5)
    assert (attempt.place, attempt.outcome) == (f"slurm: {slurm.style} (job {jobs[1]})", "ok")
    assert read_log(cache_dir, attempt) == "job 1 says hello\n"
    _, stats = await Many(3).run_with_stats(cache_dir=cache_dir, prefixes={"cluster": slurm})
    assert stats.run == 0


class Fails(Task, job_prefix=SRUN):
    def run_task(self) -> None:
        raise KeyError("no such sample")


async def test_a_failing_job(cache_dir: Path) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await Fails().run(cache_dir=cache_dir)
    error = info.value
    assert str(error).startswith("Fails() failed: KeyError: 'no such sample'")
    assert error.command is not None
    assert error.command[0] == "srun"
    assert error.returncode != 0
    assert isinstance(error.__cause__, KeyError)
    (attempt,) = await attempts_of_node(cache_dir, Fails().__af_key__, 5)
    assert re.fullmatch(r"slurm: srun \(job \d+\)", attempt.place), attempt.place  # the worker said which


class Long(Task):
    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> None:
        Path(self.pidfile).write_text(str(os.getpid()))
        time.sleep(120)


@pytest.mark.parametrize("slurm", [SRUN, SBATCH], ids=["srun", "sbatch"])
async def test_cancellation_cancels_the_job(cache_dir: Path, tmp_path: Path, slurm: Slurm) -> None:
    pidfile = tmp_path / "pid"
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: Long(str(pidfile)).run(cache_dir=cache_dir, prefixes={Long.task_name: slurm})
            )
            while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110 - a job writes it
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        # The job leaves the queue and its process is gone (slurmstepd may take a moment).
        while squeue_names():  # noqa: ASYNC110 - Slurm's state, polled
            await anyio.sleep(0.2)
        pid = int(pidfile.read_text())
        while _alive(pid):  # noqa: ASYNC110 - another process
            await anyio.sleep(0.2)
    # A cancelled job never answers: sbatch's job is named by the id it printed, srun's
    # step by the pid of the srun launched here.
    (attempt,) = await attempts_of_node(cache_dir, Long(str(pidfile)).__af_key__, 5)
    named = r"\(job \d+\)" if slurm.style == "sbatch" else r"\(pid \d+\)"
    assert (attempt.outcome, re.fullmatch(f"slurm: {slurm.style} {named}", attempt.place) is not None) == (
        "cancelled",
        True,
    ), attempt.place


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for slurmstepd to reap it counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_slurm_options_are_checked() -> None:
    # OptionError, as Host's and run options' are (also a ValueError).
    with pytest.raises(OptionError, match=r"Slurm\(style='qsub'\): expected \"srun\" or \"sbatch\""):
        Slurm(style="qsub")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"Slurm\(extra=\[1\]\): expected a list of strings"):
        Slurm(extra=[1])  # type: ignore[list-item]
    with pytest.raises(OptionError, match="extra"):
        Slurm(extra="--exclusive")
    for name in ("partition", "time", "python"):
        with pytest.raises(OptionError, match=name):
            Slurm(**{name: ""})
    assert issubclass(OptionError, ValueError)
    assert Slurm(extra=["--gres=gpu:1"]) == Slurm(extra=("--gres=gpu:1",))


# Warm pools: Slurm(workers=N) runs many bodies on up to N long-lived srun jobs.

POOL = Slurm(time="00:05:00", workers=2)


def squeue_ids() -> set[str]:
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=10, check=True
    )
    return set(done.stdout.split())


async def _wait_gone(job_ids: set[str], pids: set[int]) -> None:
    """Wait until none of `job_ids` is queued and none of `pids` runs (Slurm may take a moment)."""
    with anyio.fail_after(30):
        while job_ids & squeue_ids() or any(_alive(pid) for pid in pids):  # noqa: ASYNC110 - Slurm's state
            await anyio.sleep(0.2)


async def test_a_warm_pool_runs_many_bodies_on_few_jobs(
    cache_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(90):
        jobs, stats = await Many(8).run_with_stats(cache_dir=cache_dir, prefixes={"cluster": POOL})
    assert stats.run == 9
    assert all(job is not None for job in jobs)
    assert 1 <= len(set(jobs)) <= 2  # at most two workers, each an srun job of its own
    out, _ = capfd.readouterr()
    assert "[OnNode(1)] job 1 says hello" in out
    # The history names the job and the worker; the attempt's log has what the body printed.
    places: set[str] = set()
    for i in range(8):
        (attempt,) = await attempts_of_node(cache_dir, OnNode(i).__af_key__, 5)
        assert attempt.outcome == "ok"
        match = re.fullmatch(rf"slurm: srun \(job {jobs[i]}, worker ([12])\)", attempt.place)
        assert match is not None, attempt.place
        places.add(attempt.place)
        assert read_log(cache_dir, attempt) == f"job {i} says hello\n"
    assert len(places) == len(set(jobs))
    # The workers ended with the run.
    await _wait_gone({str(job) for job in jobs}, set())
    with anyio.fail_after(30):
        _, stats = await Many(8).run_with_stats(cache_dir=cache_dir, prefixes={"cluster": POOL})
    assert stats.run == 0  # all cached: no worker started


class WarmLong(Task):
    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> None:
        Path(self.pidfile).write_text(f"{os.getpid()} {os.environ['SLURM_JOB_ID']}")
        time.sleep(120)


async def test_cancelling_a_warm_pool_ends_its_jobs(cache_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: WarmLong(str(pidfile)).run(cache_dir=cache_dir, prefixes={WarmLong.task_name: POOL})
            )
            pid, job = await _running(pidfile)
            tg.cancel_scope.cancel()
    await _wait_gone({job}, {int(pid)})
    (attempt,) = await attempts_of_node(cache_dir, WarmLong(str(pidfile)).__af_key__, 5)
    assert attempt.outcome == "cancelled"
    assert attempt.place == f"slurm: srun (job {job}, worker 1)"


class Killed(Task, retries=1, retry_delay=0):
    """Its first attempt waits to be killed; a second one returns where it ran."""

    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> str:
        if not Path(self.pidfile).exists():
            Path(self.pidfile).write_text(f"{os.getpid()} {os.environ['SLURM_JOB_ID']}")
            time.sleep(120)
        return os.environ["SLURM_JOB_ID"]


class KilledOnce(Killed, retries=0):
    pass


async def _running(pidfile: Path) -> tuple[str, str]:
    """Wait until a body wrote its pid and job id into `pidfile`; return them."""
    path = anyio.Path(pidfile)
    while not await path.exists() or not await path.read_text():  # noqa: ASYNC110 - a job writes it
        await anyio.sleep(0.05)
    pid, job = (await path.read_text()).split()
    return pid, job


async def _kill_when_running(pidfile: Path) -> tuple[int, str]:
    pid, job = await _running(pidfile)
    os.kill(int(pid), 9)
    return int(pid), job


async def test_a_lost_worker_is_retried_and_replaced(cache_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    killed: list[tuple[int, str]] = []
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:

            async def kill() -> None:
                killed.append(await _kill_when_running(pidfile))

            tg.start_soon(kill)
            job = await Killed(str(pidfile)).run(cache_dir=cache_dir, prefixes={Killed.task_name: POOL})
    ((_, lost_job),) = killed
    assert job != lost_job  # a new worker
    second, first = await attempts_of_node(cache_dir, Killed(str(pidfile)).__af_key__, 5)  # latest first
    assert (first.outcome, first.place) == ("failed", f"slurm: srun (job {lost_job}, worker 1)")
    assert first.error is not None
    assert first.error.startswith(f"Killed({str(pidfile)!r}) failed: its worker (job {lost_job}, worker 1)")
    assert "was lost: its job ended: the worker was killed by SIGKILL" in first.error
    assert (second.outcome, second.place) == ("ok", f"slurm: srun (job {job}, worker 2)")


async def test_a_lost_worker_without_retries_is_named(cache_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_kill_when_running, pidfile)
            with pytest.raises(TaskFailedError) as info:
                await KilledOnce(str(pidfile)).run(cache_dir=cache_dir, prefixes={KilledOnce.task_name: POOL})
    _, job = pidfile.read_text().split()
    assert str(info.value).startswith(
        f"KilledOnce({str(pidfile)!r}) failed: its worker (job {job}, worker 1) was lost: "
        "its job ended: the worker was killed by SIGKILL"
    ), str(info.value)
    assert info.value.command is not None
    assert info.value.command[0] == "srun"


class FailsWarm(Task, job_prefix=Slurm(time="00:05:00", workers=1)):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> None:
        print("about to fail", flush=True)
        raise KeyError("no such sample")


async def test_a_failing_body_in_a_warm_pool(cache_dir: Path) -> None:
    with anyio.fail_after(60), pytest.raises(TaskFailedError) as info:
        await FailsWarm(1).run(cache_dir=cache_dir)
    error = info.value
    assert str(error).startswith("FailsWarm(1) failed: KeyError: 'no such sample'")
    assert isinstance(error.__cause__, KeyError)
    assert error.command is not None
    assert error.command[0] == "srun"
    (attempt,) = await attempts_of_node(cache_dir, FailsWarm(1).__af_key__, 5)
    assert re.fullmatch(r"slurm: srun \(job \d+, worker 1\)", attempt.place), attempt.place
    assert read_log(cache_dir, attempt).startswith("about to fail\n")


def test_warm_pool_options_are_checked() -> None:
    for workers in (0, -1, 1.5, "2", True):
        with pytest.raises(OptionError, match=r"Slurm\(workers=.*\): expected None .* or an int >= 1"):
            Slurm(workers=workers)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match='warm workers are srun steps; pass style="srun"'):
        Slurm(style="sbatch", workers=2)
    assert Slurm(workers=3).workers == 3
