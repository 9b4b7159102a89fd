"""SSH hosts against a real OpenSSH server on 127.0.0.1 (`bash tests/services/sshd-up.sh`).

The server runs on this machine, so the remote Python is this venv's (an absolute path:
root's login shell would otherwise pick pyenv's), and whether a remote process is gone
can be checked here.
"""

from __future__ import annotations

import os
import posixpath
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from asyncflow import Host, HostError, OptionError, Requires, RequiresList, Task, TaskFailedError
from asyncflow._cache.store import attempts_of_node, read_log
from asyncflow._placements import parse_host_url
from asyncflow._runners import payload
from asyncflow._runners.payload import THRESHOLD

from .service_env import need_sshd, requires_sshd

CHANNEL = "remote"


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """The test sshd, with job files in a directory of the test's own."""
    env = need_sshd()
    return Host(
        env["ASYNCFLOW_SSH_HOST"],
        int(env["ASYNCFLOW_SSH_PORT"]),
        env["ASYNCFLOW_SSH_USER"],
        python=sys.executable,
        workdir=str(tmp_path / "remote-jobs"),
        key_file=env["ASYNCFLOW_SSH_KEY"],
        known_hosts=env["ASYNCFLOW_SSH_KNOWN_HOSTS"],
    )


def _alive(pid: int) -> bool:
    """Tell whether `pid` runs (a zombie waiting for its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class Where(Task, channel=CHANNEL):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> dict[str, object]:
        return {
            "i": self.i,
            "pid": os.getpid(),
            "job": sys.argv[-1],
            "connection": os.environ.get("SSH_CONNECTION"),
        }


class Chain(Task, channel=CHANNEL):
    parts: RequiresList[dict[str, object]]

    def build_task(self, n: int) -> None:
        self.parts = [Where(i) for i in range(n)]

    def run_task(self) -> list[object]:
        return [p["connection"] for p in self.parts] + [os.environ.get("SSH_CONNECTION")]


@pytest.mark.ssh
@requires_sshd
async def test_a_body_runs_on_the_host(cache_dir: Path, host: Host) -> None:
    with anyio.fail_after(30):
        out = await Where(1).run(cache_dir=cache_dir, hosts={CHANNEL: host})
    assert out["i"] == 1
    assert out["pid"] != os.getpid()
    assert out["connection"] is not None  # it ran under sshd
    # The job directory was under the host's workdir, and is gone afterwards.
    assert host.workdir is not None
    job = Path(str(out["job"]))
    assert job.parent == Path(host.workdir)
    assert not await anyio.Path(job).exists()
    assert not [p async for p in anyio.Path(cache_dir / "asyncflow" / "jobs").iterdir()]
    # The run closed its connections and let go of the SSH thread.
    assert not [t for t in threading.enumerate() if t.name.startswith("asyncio-portal-")]
    # The result was committed here: the next run reuses it without connecting.
    _, stats = await Where(1).run_with_stats(cache_dir=cache_dir, hosts={CHANNEL: host})
    assert stats.reused == 1


@pytest.mark.ssh
@requires_sshd
async def test_connections_are_reused_across_tasks(cache_dir: Path, host: Host) -> None:
    with anyio.fail_after(30):
        connections = await Chain(1).run(cache_dir=cache_dir, hosts={CHANNEL: host})
    assert len(connections) == 2
    assert len(set(connections)) == 1  # the same client port: one connection for both


class AsyncWhere(Task, channel=CHANNEL):
    async def run_task(self) -> int:
        await anyio.sleep(0.01)
        return os.getpid()


@pytest.mark.ssh
@requires_sshd
async def test_an_async_body_on_the_host(cache_dir: Path, host: Host) -> None:
    with anyio.fail_after(30):
        assert await AsyncWhere().run(cache_dir=cache_dir, hosts={CHANNEL: host}) != os.getpid()


class JobFiles(Task, channel=CHANNEL):
    """Tells the modes of the job files on the host, as the worker finds them."""

    def run_task(self) -> dict[str, int]:
        job = Path(sys.argv[-1])
        files = {p.name: p.stat().st_mode & 0o777 for p in job.iterdir()}
        return {"workdir": job.parent.stat().st_mode & 0o777, "job": job.stat().st_mode & 0o777} | files


@pytest.mark.ssh
@requires_sshd
async def test_job_files_are_the_owners_only_on_both_ends(
    cache_dir: Path, host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[int] = []
    read_answer = payload.read_answer

    def look_then_read(job: Path) -> payload.Answer | None:
        answers.append((job / payload.RESULT).stat().st_mode & 0o777)  # as downloaded here
        return read_answer(job)

    monkeypatch.setattr(payload, "read_answer", look_then_read)
    umask = os.umask(0)  # here; the host's is sshd's
    try:
        with anyio.fail_after(30):
            remote = await JobFiles().run(cache_dir=cache_dir, hosts={CHANNEL: host})
    finally:
        os.umask(umask)
    # The workdir did not exist: the run made it, the owner's only, like each job directory.
    assert remote == {"workdir": 0o700, "job": 0o700, payload.SYS_PATH: 0o600, payload.PAYLOAD: 0o600}
    assert answers  # read here, and by the pool for a spilled answer
    assert set(answers) == {0o600}


class Printer(Task, channel=CHANNEL):
    def run_task(self) -> int:
        print("hello from the host")  # no flush: the worker runs unbuffered (-u)
        print("a warning", file=sys.stderr)
        return os.getpid()  # the worker's pid on the host


@pytest.mark.ssh
@requires_sshd
async def test_output_streams_back_labelled(
    cache_dir: Path, host: Host, capfd: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(30):
        pid = await Printer().run(cache_dir=cache_dir, hosts={CHANNEL: host})
    out, err = capfd.readouterr()
    assert "[Printer()] hello from the host\n" in out
    assert "[Printer()] a warning\n" in err
    # The run's history says where the body ran and keeps what it printed.
    (attempt,) = await attempts_of_node(cache_dir, Printer().__af_key__, 5)
    assert (attempt.place, attempt.outcome) == (
        f"ssh://{host.user}@{host.host}:{host.port} (pid {pid})",
        "ok",
    )
    assert sorted(read_log(cache_dir, attempt).splitlines()) == ["a warning", "hello from the host"]


class Boom(Task, channel=CHANNEL):
    def run_task(self) -> None:
        print("about to fail", file=sys.stderr)
        raise ValueError("boom on the host")


@pytest.mark.ssh
@requires_sshd
async def test_a_body_that_raises(cache_dir: Path, host: Host) -> None:
    with anyio.fail_after(30), pytest.raises(TaskFailedError) as info:
        await Boom().run(cache_dir=cache_dir, hosts={CHANNEL: host})
    error = info.value
    assert str(error).startswith("Boom() failed: ValueError: boom on the host")
    assert error.returncode == 1
    assert error.command is not None
    assert error.command[:4] == ("ssh", "-p", str(host.port), f"{host.user}@{host.host}")
    assert f"{sys.executable} -u -m asyncflow.worker --exit-on-stdin-eof" in error.command[-1]
    assert error.stderr_tail is not None
    assert "about to fail" in error.stderr_tail
    assert isinstance(error.__cause__, ValueError)
    assert "remote traceback" in str(error)
    assert 'raise ValueError("boom on the host")' in str(error)
    (attempt,) = await attempts_of_node(cache_dir, Boom().__af_key__, 5)
    assert (attempt.outcome, attempt.error) == ("failed", "Boom() failed: ValueError: boom on the host")
    output = read_log(cache_dir, attempt)
    assert output.startswith("about to fail\n")
    assert 'raise ValueError("boom on the host")' in output  # the failure's traceback ends it


class Meet(Task, channel=CHANNEL):
    """Arrive, then wait (up to 15 s) until `n` bodies have arrived: proof that they ran at once."""

    def build_task(self, i: int, n: int, log: str) -> None:
        self.n = n
        self.log = log

    def run_task(self) -> tuple[int, str | None]:
        with open(self.log, "a") as f:
            f.write("arrived\n")
        deadline = time.monotonic() + 15
        while (seen := len(Path(self.log).read_text().splitlines())) < self.n and time.monotonic() < deadline:
            time.sleep(0.02)
        return seen, os.environ.get("SSH_CONNECTION")


class Meeting(Task):
    parts: RequiresList[tuple[int, str | None]]

    def build_task(self, n: int, log: str) -> None:
        self.parts = [Meet(i, n, log) for i in range(n)]

    async def run_task(self) -> list[tuple[int, str | None]]:
        return self.parts


@pytest.mark.ssh
@requires_sshd
async def test_more_jobs_than_sessions_on_one_connection(cache_dir: Path, host: Host, tmp_path: Path) -> None:
    # OpenSSH allows 10 sessions per connection (one is SFTP's): 12 jobs at once need a
    # second connection, never an "open failed".
    with anyio.fail_after(30):
        met = await Meeting(12, str(tmp_path / "log")).run(cache_dir=cache_dir, hosts={CHANNEL: host})
    assert [seen for seen, _ in met] == [12] * 12
    assert len({connection for _, connection in met}) == 2


class Gather(Task):
    parts: RequiresList[dict[str, object]]

    def build_task(self, n: int) -> None:
        self.parts = [Where(i) for i in range(n)]

    async def run_task(self) -> list[object]:
        return [p["i"] for p in self.parts]


@pytest.mark.ssh
@requires_sshd
async def test_a_server_with_fewer_sessions_than_configured(cache_dir: Path, host: Host) -> None:
    # The server refuses the 11th session (the 10th job); the pool learns that and queues the job.
    host = replace(host, connections=1, sessions_per_connection=20)
    with anyio.fail_after(30):
        assert await Gather(10).run(cache_dir=cache_dir, hosts={CHANNEL: host}) == list(range(10))


class Sleeper(Task, channel=CHANNEL):
    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> None:
        Path(self.pidfile).write_text(str(os.getpid()))
        time.sleep(60)


async def _wait_gone(pid: int) -> None:
    with anyio.fail_after(5):
        while _alive(pid):  # noqa: ASYNC110 - another process's state
            await anyio.sleep(0.05)


@pytest.mark.ssh
@requires_sshd
async def test_cancellation_ends_the_remote_process(cache_dir: Path, host: Host, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: Sleeper(str(pidfile)).run(cache_dir=cache_dir, hosts={CHANNEL: host}))
            while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110 - the remote body writes it
                await anyio.sleep(0.05)
            assert _alive(int(pidfile.read_text()))
            tg.cancel_scope.cancel()
    # sshd refuses signals for root, and closing the channel alone would leave it running.
    await _wait_gone(int(pidfile.read_text()))
    assert host.workdir is not None
    assert not [p async for p in anyio.Path(host.workdir).iterdir()]  # its job directory is gone too


class SlowSleeper(Sleeper, channel=CHANNEL, timeout=5):  # time to start a remote Python on a busy machine
    pass


@pytest.mark.ssh
@requires_sshd
async def test_a_timeout_ends_the_remote_process(cache_dir: Path, host: Host, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with anyio.fail_after(30), pytest.raises(TaskFailedError, match="timed out after 5 s"):
        await SlowSleeper(str(pidfile)).run(cache_dir=cache_dir, hosts={CHANNEL: host})
    await _wait_gone(int(pidfile.read_text()))


# Each way of failing to use a host is a HostError with a reason of its own.


async def _host_error(cache_dir: Path, host: Host) -> HostError:
    with anyio.fail_after(30), pytest.raises(TaskFailedError) as info:
        await Where(9).run(cache_dir=cache_dir, hosts={CHANNEL: host})
    error = info.value.__cause__
    assert isinstance(error, HostError), info.value
    assert error.host == host.url
    assert str(info.value).startswith(f"Where(9) failed: HostError: {host.url}: ")
    return error


def _wrong_key_line(host: Host) -> str:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    return f"[{host.host}]:{host.port} {key}\n"


@pytest.mark.ssh
@requires_sshd
async def test_a_changed_host_key(cache_dir: Path, host: Host, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(_wrong_key_line(host))
    error = await _host_error(cache_dir, replace(host, known_hosts=str(known_hosts)))
    assert error.reason == "host-key"
    assert "host key is not trusted" in str(error)
    assert "ssh-keyscan" in str(error)


@pytest.mark.ssh
@requires_sshd
async def test_a_missing_known_hosts_file(cache_dir: Path, host: Host, tmp_path: Path) -> None:
    error = await _host_error(cache_dir, replace(host, known_hosts=str(tmp_path / "nope")))
    assert error.reason == "host-key"
    assert "does not exist" in str(error)


@pytest.mark.ssh
@requires_sshd
async def test_a_refused_connection(cache_dir: Path, host: Host) -> None:
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    error = await _host_error(cache_dir, replace(host, port=port))
    assert error.reason == "refused"
    assert f"nothing listens on port {port}" in str(error)


@pytest.mark.ssh
@requires_sshd
async def test_a_refused_client_key(cache_dir: Path, host: Host, tmp_path: Path) -> None:
    import asyncssh

    key_file = tmp_path / "id_other"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key_file))
    error = await _host_error(cache_dir, replace(host, key_file=str(key_file)))
    assert error.reason == "auth"
    assert f"authentication failed for user {host.user} with the key {key_file}" in str(error)


@pytest.mark.ssh
@requires_sshd
@pytest.mark.parametrize("workers", [None, 1], ids=["per-job", "warm"])
async def test_a_missing_remote_python(cache_dir: Path, host: Host, workers: int | None) -> None:
    error = await _host_error(cache_dir, replace(host, python="/nonexistent/python", workers=workers))
    assert error.reason == "python"
    assert "the remote python '/nonexistent/python' cannot be started (exit status 127" in str(error)


@pytest.mark.ssh
@requires_sshd
@pytest.mark.parametrize("workers", [None, 1], ids=["per-job", "warm"])
async def test_a_remote_python_without_asyncflow(
    cache_dir: Path, host: Host, tmp_path: Path, workers: int | None
) -> None:
    python = tmp_path / "python"  # runs this interpreter with -I: no venv site-packages, no asyncflow
    python.write_text(f'#!/bin/sh\nexec {sys.base_prefix}/bin/python3 -I -S "$@"\n')
    python.chmod(0o755)
    error = await _host_error(cache_dir, replace(host, python=str(python), workers=workers))
    assert error.reason == "python"
    assert "asyncflow is not installed for the remote python" in str(error)


# The URL form.


@pytest.mark.ssh
@requires_sshd
async def test_a_host_given_as_a_url(cache_dir: Path, host: Host) -> None:
    url = (
        f"ssh://{host.user}@{host.host}:{host.port}?python={sys.executable}"
        f"&key_file={host.key_file}&known_hosts={host.known_hosts}&workdir={host.workdir}"
    )
    assert parse_host_url(url) == host
    with anyio.fail_after(30):
        out = await Where(3).run(cache_dir=cache_dir, hosts={CHANNEL: url})
    assert out["pid"] != os.getpid()


def test_url_parsing() -> None:
    assert parse_host_url("ssh://example.org") == Host("example.org")
    assert parse_host_url("ssh://me@example.org:2200/") == Host("example.org", 2200, "me")
    assert parse_host_url("ssh://[::1]:22?connections=2&connect_timeout=1.5") == Host(
        "::1", connections=2, connect_timeout=1.5
    )
    assert parse_host_url("ssh://a%40b@h").user == "a@b"
    assert Host("::1", user="me").url == "ssh://me@[::1]:22"


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://example.org", "is not an ssh:// URL"),
        ("example.org", "is not an ssh:// URL"),
        ("ssh://", "names no host"),
        ("ssh://me:secret@example.org", "holds a password"),
        ("ssh://example.org:99999", "has an invalid port"),
        ("ssh://example.org:port", "has an invalid port"),
        ("ssh://example.org/scratch", "has a path; give the remote job directory as ?workdir="),
        ("ssh://example.org#x", "has a #fragment"),
        ("ssh://example.org?pyton=x", "has an unknown parameter 'pyton'"),
        ("ssh://example.org?python=a&python=b", "sets 'python' twice"),
        ("ssh://example.org?connections=many", "has connections='many', not an int"),
        ("ssh://example.org?connections=0", "has connections=0, not an int >= 1"),
        ("ssh://example.org?python=", "has python='', not a path or command name"),
        ("ssh://example.org:0", "has port=0, not an int from 1 to 65535"),
    ],
)
def test_bad_urls(url: str, what: str) -> None:
    with pytest.raises(OptionError, match="run option hosts: ") as info:
        parse_host_url(url)
    assert what in str(info.value)
    assert "expected ssh://[user@]host[:port]" in str(info.value)


async def test_a_bad_url_is_an_option_error(cache_dir: Path) -> None:
    with pytest.raises(OptionError, match="is not an ssh:// URL"):
        await Where(1).run(cache_dir=cache_dir, hosts={CHANNEL: "http://example.org"})


def test_host_fields_are_checked() -> None:
    with pytest.raises(
        OptionError, match=r"^Host\('example.org', ...\): port=0 is invalid: expected an int from 1"
    ):
        Host("example.org", port=0)
    with pytest.raises(OptionError, match=r"sessions_per_connection=1 is invalid"):
        Host("example.org", sessions_per_connection=1)
    assert hash(Host("a")) == hash(Host("a"))


# The worker's side of cancellation, without SSH.


class Dozer(Task):
    def run_task(self) -> None:
        Path(os.environ["AF_TEST_PIDFILE"]).write_text(str(os.getpid()))
        time.sleep(60)


def test_the_worker_exits_when_its_stdin_closes(tmp_path: Path) -> None:
    from asyncflow._runners import payload
    from asyncflow.worker import HANGUP

    pidfile = tmp_path / "pid"
    job = payload.write_payload(tmp_path / "cache", "job", Dozer())
    command = [sys.executable, "-m", "asyncflow.worker", "--exit-on-stdin-eof", str(job)]
    env = os.environ | {"AF_TEST_PIDFILE": str(pidfile)}
    with subprocess.Popen(command, stdin=subprocess.PIPE, env=env) as worker:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.poll() is None  # the body runs, in the main thread, while stdin is open
        assert worker.stdin is not None
        worker.stdin.close()
        assert worker.wait(timeout=5) == HANGUP
    assert not (job / payload.RESULT).exists()


def test_worker_usage(capfd: pytest.CaptureFixture[str]) -> None:
    from asyncflow.worker import main

    assert main(["worker", "--exit-on-stdin-eof"]) == 2
    assert main(["worker", "--bogus", "job"]) == 2
    assert "usage: python -m asyncflow.worker [--exit-on-stdin-eof] JOB_DIR" in capfd.readouterr().err


# Warm pools: Host(workers=N) runs many bodies on up to N long-lived remote workers.


class Shout(Task, channel=CHANNEL):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> dict[str, object]:
        print(f"body {self.i} on the host")
        print(f"body {self.i} warns", file=sys.stderr)
        return {"i": self.i, "pid": os.getpid(), "worker": sys.argv[-1]}


class Shouts(Task):
    parts: RequiresList[dict[str, object]]

    def build_task(self, n: int) -> None:
        self.parts = [Shout(i) for i in range(n)]

    async def run_task(self) -> list[dict[str, object]]:
        return self.parts


@pytest.mark.ssh
@requires_sshd
async def test_a_warm_pool_runs_many_bodies_on_few_workers(
    cache_dir: Path, host: Host, capfd: pytest.CaptureFixture[str]
) -> None:
    pool = replace(host, workers=2)
    with anyio.fail_after(60):
        parts, stats = await Shouts(12).run_with_stats(cache_dir=cache_dir, hosts={CHANNEL: pool})
    assert stats.run == 13
    assert [p["i"] for p in parts] == list(range(12))
    pids = {p["pid"] for p in parts}
    assert 1 <= len(pids) <= 2
    assert {p["worker"] for p in parts} <= {"1", "2"}  # `--serve N`
    out, _ = capfd.readouterr()
    assert "[Shout(3)] body 3 on the host\n" in out  # the worker's stdout carries its stderr too
    assert "[Shout(3)] body 3 warns\n" in out
    for part in parts:
        (attempt,) = await attempts_of_node(cache_dir, Shout(part["i"]).__af_key__, 5)  # type: ignore[arg-type]
        assert (attempt.place, attempt.outcome) == (
            f"ssh://{host.user}@{host.host}:{host.port} (pid {part['pid']}, worker {part['worker']})",
            "ok",
        )
        i = part["i"]
        assert read_log(cache_dir, attempt) == f"body {i} on the host\nbody {i} warns\n"
    for pid in pids:  # the workers ended with the run
        await _wait_gone(pid)  # type: ignore[arg-type]
    with anyio.fail_after(30):
        _, stats = await Shouts(12).run_with_stats(cache_dir=cache_dir, hosts={CHANNEL: pool})
    assert stats.run == 0


@pytest.mark.ssh
@requires_sshd
async def test_cancelling_a_warm_pool_ends_its_workers(cache_dir: Path, host: Host, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    pool = replace(host, workers=1)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: Sleeper(str(pidfile)).run(cache_dir=cache_dir, hosts={CHANNEL: pool}))
            while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110 - the remote body writes it
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    pid = int(pidfile.read_text())
    await _wait_gone(pid)
    assert _ps(pid) == ""  # the worker ran the body, in its main thread
    (attempt,) = await attempts_of_node(cache_dir, Sleeper(str(pidfile)).__af_key__, 5)
    assert (attempt.outcome, attempt.place) == ("cancelled", f"{pool.url} (pid {pid}, worker 1)")
    assert pool.workdir is not None
    assert not [p async for p in anyio.Path(pool.workdir).iterdir()]  # no job directory left


def _ps(pid: int) -> str:
    """What ``ps`` says of `pid` on the (local) host: nothing once it is gone."""
    done = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-p", str(pid)], capture_output=True, text=True)
    return "" if "Z" in done.stdout.split()[1:2] else done.stdout.strip()


class KilledHere(Task, channel=CHANNEL, retries=1, retry_delay=0):
    """Its first attempt waits to be killed; a second one returns where it ran."""

    def build_task(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def run_task(self) -> int:
        if not Path(self.pidfile).exists():
            Path(self.pidfile).write_text(str(os.getpid()))
            time.sleep(60)
        return os.getpid()


class KilledHereOnce(KilledHere, retries=0):
    pass


async def _run_and_kill(
    task: KilledHere, pidfile: Path, cache_dir: Path, pool: Host
) -> tuple[int | TaskFailedError, int]:
    """Run `task` on `pool`, killing its worker (kill -9) once its first attempt wrote `pidfile`.

    Returns what the run returned or raised, and the pid killed.
    """
    path = anyio.Path(pidfile)
    outcome: int | TaskFailedError
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def kill() -> None:
                while not await path.exists() or not await path.read_text():  # noqa: ASYNC110 - the remote body writes it
                    await anyio.sleep(0.05)
                os.kill(int(await path.read_text()), 9)

            tg.start_soon(kill)
            try:
                outcome = await task.run(cache_dir=cache_dir, hosts={CHANNEL: pool})
            except TaskFailedError as exc:
                outcome = exc
    return outcome, int(await path.read_text())


@pytest.mark.ssh
@requires_sshd
async def test_a_lost_remote_worker_is_retried_and_replaced(
    cache_dir: Path, host: Host, tmp_path: Path
) -> None:
    pool = replace(host, workers=1)
    task = KilledHere(str(tmp_path / "pid"))
    pid, lost = await _run_and_kill(task, tmp_path / "pid", cache_dir, pool)
    assert pid != lost  # a new worker
    second, first = await attempts_of_node(cache_dir, task.__af_key__, 5)  # latest first
    assert (first.outcome, first.place) == ("failed", f"{pool.url} (pid {lost}, worker 1)")
    assert (
        first.error
        == f"{task!r} failed: its worker (pid {lost}, worker 1) was lost: it was killed by SIGKILL"
    )
    assert (second.outcome, second.place) == ("ok", f"{pool.url} (pid {pid}, worker 2)")


@pytest.mark.ssh
@requires_sshd
async def test_a_lost_remote_worker_without_retries_is_named(
    cache_dir: Path, host: Host, tmp_path: Path
) -> None:
    task = KilledHereOnce(str(tmp_path / "pid"))
    error, lost = await _run_and_kill(task, tmp_path / "pid", cache_dir, replace(host, workers=1))
    assert isinstance(error, TaskFailedError)
    assert str(error).startswith(
        f"{task!r} failed: its worker (pid {lost}, worker 1) was lost: it was killed by SIGKILL\n"
    )
    assert error.command is not None
    assert error.command[0] == "ssh"


@pytest.mark.ssh
@requires_sshd
async def test_a_body_that_raises_in_a_warm_pool(cache_dir: Path, host: Host) -> None:
    pool = replace(host, workers=1)
    with anyio.fail_after(30), pytest.raises(TaskFailedError) as info:
        await Boom().run(cache_dir=cache_dir, hosts={CHANNEL: pool})
    error = info.value
    assert str(error).startswith("Boom() failed: ValueError: boom on the host")
    assert isinstance(error.__cause__, ValueError)
    assert error.command is not None
    assert f"{sys.executable} -u -m asyncflow.worker --serve 1" in error.command[-1]
    (attempt,) = await attempts_of_node(cache_dir, Boom().__af_key__, 5)
    assert (attempt.outcome, attempt.error) == ("failed", "Boom() failed: ValueError: boom on the host")
    assert read_log(cache_dir, attempt).startswith("about to fail\n")


def test_warm_pool_host_options_are_checked() -> None:
    with pytest.raises(
        OptionError, match=r"workers=0 is invalid: expected None \(one job per body\) or an int >= 1"
    ):
        Host("h", workers=0)
    with pytest.raises(OptionError, match=r"workers=40 is more than its connections can hold"):
        Host("h", workers=40)
    assert parse_host_url("ssh://h?workers=3").workers == 3


# Big values: uploaded to a host at most once per run, and a big answer stays there for its readers.

BIG = THRESHOLD + 1000


class BigHere(Task):  # runs in this process
    def run_task(self) -> bytes:
        return b"h" * BIG


class BigThere(Task, channel=CHANNEL):  # runs on the host
    def run_task(self) -> bytes:
        return b"t" * BIG


class ReadsBig(Task, channel=CHANNEL):
    here: Requires[bytes]
    there: Requires[bytes]

    def build_task(self, i: int, workdir: str) -> None:
        self.here = BigHere()
        self.there = BigThere()
        self.i = i
        self.workdir = workdir

    def run_task(self) -> dict[str, object]:
        return {
            "here": self.here == b"h" * BIG,
            "there": self.there == b"t" * BIG,
            # What the run keeps on the host: the values' files, beside the jobs' directories.
            "files": sorted(p.name for p in Path(self.workdir).glob("values-*/*")),
        }


class ReadersOfBig(Task):
    parts: RequiresList[dict[str, object]]

    def build_task(self, n: int, workdir: str) -> None:
        self.parts = [ReadsBig(i, workdir) for i in range(n)]

    async def run_task(self) -> list[dict[str, object]]:
        return self.parts


@pytest.mark.ssh
@requires_sshd
@pytest.mark.parametrize("workers", [None, 2], ids=["per-job", "warm"])
async def test_big_values_go_to_a_host_once_per_run(
    cache_dir: Path, host: Host, workers: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncflow._runners import sshconn

    uploads: list[tuple[str, int]] = []  # (remote path, size), from the SSH thread
    upload = sshconn._upload  # pyright: ignore[reportPrivateUsage]

    async def counted(sftp: object, local: Path, remote: str) -> None:
        uploads.append((remote, (await anyio.Path(local).stat()).st_size))
        await upload(sftp, local, remote)  # type: ignore[arg-type]

    monkeypatch.setattr(sshconn, "_upload", counted)
    assert host.workdir is not None
    where = replace(host, workers=workers)
    with anyio.fail_after(60):
        parts = await ReadersOfBig(3, host.workdir).run(cache_dir=cache_dir, hosts={CHANNEL: where})
    assert all(p["here"] and p["there"] for p in parts)
    # BigHere's value was uploaded once for the three readers; BigThere's answer never was:
    # it stayed on the host, where the readers found it.
    (value,) = [(remote, size) for remote, size in uploads if "/values-" in remote]
    assert value[1] > THRESHOLD
    assert all(size < THRESHOLD // 10 for remote, size in uploads if "/values-" not in remote)  # payloads
    for part in parts:
        assert part["files"] == sorted([posixpath.basename(value[0]), *part["files"][1:]])
        assert len(part["files"]) == 2  # the value, and the answer (named by its job)
        assert any(name.endswith(".answer.pkl") for name in part["files"])  # type: ignore[union-attr]
    # The run removed its values from the host, and here.
    assert os.listdir(host.workdir) == []
    assert os.listdir(cache_dir / "asyncflow" / "tmp") == []
