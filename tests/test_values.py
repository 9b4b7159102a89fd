"""Big values by reference: large upstream results reach bodies elsewhere as files, written once per run."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncflow import Requires, RequiresDict, RequiresList, Slurm, Task, worker
from asyncflow._cache import blobs, paths
from asyncflow._requires import set_values
from asyncflow._runners import payload
from asyncflow._runners.jobs import JobEnd, run_job
from asyncflow._runners.payload import THRESHOLD, ValueRef
from asyncflow._runners.process import call_pickled, outcome_of
from asyncflow._runners.values import ValueFiles
from asyncflow._runners.warm import MARK

from .service_env import requires_slurm

BIG = THRESHOLD + 1000


class Big(Task):
    def build_task(self, tag: str) -> None:
        self.tag = tag

    def run_task(self) -> bytes:
        return _payload(self.tag)


def _payload(tag: str) -> bytes:
    return tag.encode() * BIG


class Small(Task):
    def run_task(self) -> str:
        return "small"


class Reader(Task):
    big: Requires[bytes]
    small: Requires[str]
    many: RequiresList[bytes]
    named: RequiresDict[str, bytes]

    def build_task(self, i: int) -> None:
        self.big = Big("a")
        self.small = Small()
        self.many = [Big("b"), Big("c")]
        self.named = {"d": Big("d")}
        self.i = i

    def run_task(self) -> tuple[int, str, list[int], dict[str, int], int]:
        return (
            len(self.big),
            self.small,
            [len(m) for m in self.many],
            {k: len(v) for k, v in self.named.items()},
            self.i,
        )


class Top(Task):
    readers: RequiresList[tuple[int, str, list[int], dict[str, int], int]]

    def build_task(self, n: int) -> None:
        self.readers = [Reader(i) for i in range(n)]

    async def run_task(self) -> list[int]:
        return [r[0] + sum(r[2]) + sum(r[3].values()) for r in self.readers]


def _lengths() -> int:
    return sum(len(_payload(t)) for t in "abcd")


def test_a_payload_holds_big_values_by_reference(tmp_path: Path) -> None:
    files = ValueFiles(tmp_path)
    task = Reader(0)
    big = _payload("a")
    values = {"big": big, "small": "small", "many": [_payload("b"), b"tiny"], "named": {"d": big}}
    set_values(task, values)
    data = files.dumps_task(task)
    assert len(data) < THRESHOLD // 10  # not the values themselves
    again = files.dumps_task(task)  # the second reader: the same files, nothing written again
    written = sorted(os.listdir(paths.tmp_dir(tmp_path) / os.listdir(paths.tmp_dir(tmp_path))[0]))
    assert written == ["0.pkl", "1.pkl"]  # `big` once (it appears twice), many[0]
    assert len(again) == len(data)
    loaded = blobs.loads(data)
    assert loaded.big == big
    assert loaded.small == "small"
    assert loaded.many == values["many"]
    assert loaded.named == {"d": big}
    assert task.big is big  # the task itself still reads its own values
    files.close()
    assert os.listdir(paths.tmp_dir(tmp_path)) == []


def test_small_values_stay_inline(tmp_path: Path) -> None:
    files = ValueFiles(tmp_path)
    task = Reader(0)
    set_values(task, {"big": b"x" * 100, "small": "s", "many": [], "named": {}})
    assert blobs.loads(files.dumps_task(task)).big == b"x" * 100
    assert not paths.tmp_dir(tmp_path).exists() or os.listdir(paths.tmp_dir(tmp_path)) == []


def test_a_value_ref_unpickles_as_its_value(tmp_path: Path) -> None:
    path = tmp_path / "v.pkl"
    path.write_bytes(blobs.dumps({"k": [1, 2]}))
    assert blobs.loads(blobs.dumps(ValueRef(str(path)))) == {"k": [1, 2]}


@pytest.mark.parametrize("executor", ["process", "prefix", "prefix-both"])
async def test_bodies_elsewhere_read_big_values_from_files(cache_dir: Path, executor: str) -> None:
    options: dict[str, object] = {"cache_dir": cache_dir}
    prefix = ["env", f"PYTHONPATH={os.pathsep.join(sys.path)}"]
    if executor == "process":
        options["executor"] = "process"
    elif executor == "prefix":
        options["prefixes"] = {Reader.task_name: prefix}
    else:  # the big results come from jobs too
        options["prefixes"] = {Reader.task_name: prefix, Big.task_name: prefix}
    value = await Top(3).run(**options)  # type: ignore[arg-type]
    assert value == [_lengths()] * 3
    assert os.listdir(paths.tmp_dir(cache_dir)) == []  # the run removed its value files
    jobs = paths.root(cache_dir) / "jobs"
    assert not jobs.exists() or os.listdir(jobs) == []  # and its jobs' directories and answers


async def test_a_jobs_big_result_comes_back_beside_its_directory(tmp_path: Path) -> None:
    files = ValueFiles(tmp_path)
    big = _payload("e")

    def job_of(task: Task[Any, Any]) -> Path:
        return payload.write_payload(tmp_path, secrets.token_hex(4), _built(task))

    async def launch(job: Path) -> JobEnd:
        status = await anyio.to_thread.run_sync(worker._run_job, job, "pid 1")  # what the job runs
        # The answer names the file beside the job's directory; the pickle is there, owner-only.
        assert (job / payload.RESULT).stat().st_size < THRESHOLD // 10
        assert payload.answer_path(job).stat().st_mode & 0o777 == 0o600
        return JobEnd(("worker",), status)

    job = job_of(Big("e"))
    outcome = await run_job(job, "Big('e')", None, lambda tail: launch(job), values=files)
    assert outcome.value == big
    assert not job.exists()
    assert not payload.answer_path(job).exists()
    # The run keeps the file under its job's name, for the result's readers elsewhere.
    assert os.listdir(files.spill_dir()) == [payload.answer_path(job).name]
    reader = Reader(0)
    set_values(reader, {"big": outcome.value, "small": "s", "many": [], "named": {}})
    assert blobs.loads(files.dumps_task(reader)).big == big  # read from that file
    assert os.listdir(files.spill_dir()) == [payload.answer_path(job).name]  # nothing written again
    files.close()
    # Without the run's files, the file goes once read.
    job = job_of(Big("e"))
    assert (await run_job(job, "Big('e')", None, lambda tail: launch(job))).value == big
    assert os.listdir(tmp_path / "asyncflow" / "jobs") == []


def test_a_big_result_comes_back_as_a_file_its_readers_share(tmp_path: Path) -> None:
    files = ValueFiles(tmp_path)
    big = _payload("e")
    data = call_pickled(blobs.dumps(_built(Big("e"))), 0, files.spill_dir())
    assert len(data) < THRESHOLD // 10  # the answer names a file
    outcome = outcome_of("Big('e')", data, files)
    assert outcome.value == big
    (spilled,) = os.listdir(files.spill_dir())
    reader = Reader(0)
    set_values(reader, {"big": outcome.value, "small": "s", "many": [], "named": {}})
    files.dumps_task(reader)  # the reader's payload names the same file: nothing written again
    assert os.listdir(files.spill_dir()) == [spilled]
    files.close()
    # Without the run's files (an executor elsewhere), the file goes once read.
    other = ValueFiles(tmp_path)
    data = call_pickled(blobs.dumps(_built(Big("e"))), 0, other.spill_dir())
    assert outcome_of("Big('e')", data).value == big
    assert os.listdir(other.spill_dir()) == []
    other.close()


def _built(task: Task[Any, Any]) -> Task[Any, Any]:
    task.__af_build__()
    return task


@pytest.mark.slurm
@requires_slurm
@pytest.mark.parametrize("workers", [None, 2])
async def test_slurm_jobs_read_big_values_from_files(cache_dir: Path, workers: int | None) -> None:
    where = Slurm(time="00:05:00", workers=workers)
    prefixes = {Reader.task_name: where, Big.task_name: where}  # the big results come from jobs too
    assert await Top(2).run(cache_dir=cache_dir, prefixes=prefixes) == [_lengths()] * 2
    assert os.listdir(paths.tmp_dir(cache_dir)) == []
    assert os.listdir(paths.root(cache_dir) / "jobs") == []  # nor an answer left beside a job


def test_a_warm_worker_takes_a_big_call_inline(tmp_path: Path) -> None:
    """An SSH host's warm worker gets its job's files in the call: one of megabytes arrives in many reads."""
    reader = _built(Reader(7))
    set_values(reader, {"big": b"x" * (8 << 20), "small": "s", "many": [b"y" * 1000], "named": {}})
    files = [json.dumps(sys.path).encode(), blobs.dumps(reader)]
    job = tmp_path / "jobs" / "j1"
    call = f"inline {job} {len(files[0])} {len(files[1])}\n".encode() + b"".join(files)
    worker_process = subprocess.Popen(
        [sys.executable, "-m", "asyncflow.worker", "--serve", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert worker_process.stdin is not None
    assert worker_process.stdout is not None
    try:
        assert worker_process.stdout.readline().startswith(MARK.encode() + b"ready ")
        worker_process.stdin.write(call)
        worker_process.stdin.flush()
        done, status, size = worker_process.stdout.readline().decode().removeprefix(MARK).split()
        assert (done, status) == ("done", "0")
        answer = blobs.loads(worker_process.stdout.read(int(size)))
        assert blobs.loads(answer.pickled) == (8 << 20, "s", [1000], {}, 7)
        assert not job.exists()  # the worker removed the job's directory
    finally:
        worker_process.stdin.close()  # the run is over: the idle worker exits
        assert worker_process.wait(timeout=30) == 0
        worker_process.stdout.close()


def test_job_files_have_the_cache_s_private_mode() -> None:
    # payload.py keeps its own copy, so that a job's worker spares the cache's modules.
    assert payload.PRIVATE_FILE == paths.PRIVATE_FILE


def test_a_payload_carries_the_parent_s_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = ["/nonexistent/not utf-8 \udcff", "/nonexistent/a\nnewline"]  # as the filesystem may name them
    monkeypatch.setattr(sys, "path", [*sys.path, *odd])
    job = payload.write_payload(tmp_path, "job", _built(Big("x")))
    monkeypatch.setattr(sys, "path", sys.path[:-2])
    assert isinstance(payload.read_payload(job), Big)
    assert sys.path[-2:] == odd
