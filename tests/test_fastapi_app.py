"""examples/fastapi_app.py against a real server: uvicorn in a subprocess, an httpx client."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import fastapi  # noqa: F401  (the server imports it; fail here, with a hint)
    import httpx
    import uvicorn  # noqa: F401
except ImportError as exc:  # never skip: nox installs them
    raise ImportError(f"{exc}: tests/test_fastapi_app.py needs fastapi, uvicorn and httpx") from exc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    stderr: Path

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Signal uvicorn, and check it shuts down cleanly (lifespan included) in time."""
        self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        log = self.stderr.read_text()
        # uvicorn shuts down gracefully, then re-raises the signal it caught (0.29+).
        assert status in (0, -sig), log
        assert "Application shutdown complete." in log, log
        assert "Finished server process" in log, log
        assert "Traceback" not in log, log


class Env:
    """One cache directory and execution log, shared by the servers a test starts."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.cache_dir = tmp_path / "cache"
        self.exec_log = tmp_path / "executions.log"
        self.servers: list[Server] = []

    def start(self) -> Server:
        port = free_port()
        env = {**os.environ, "AF_CACHE_DIR": str(self.cache_dir), "EXAMPLE_EXEC_LOG": str(self.exec_log)}
        n = len(self.servers)
        stderr = self.tmp_path / f"server{n}.err"
        with (self.tmp_path / f"server{n}.out").open("wb") as out, stderr.open("wb") as err:
            app = ["-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLES)]
            proc = subprocess.Popen(
                [sys.executable, *app, "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=err,
            )
        server = Server(proc, f"http://127.0.0.1:{port}", stderr)
        self.servers.append(server)
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"uvicorn exited: {stderr.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/openapi.json", timeout=1).status_code == 200:
                    return server
            assert time.monotonic() < deadline, f"uvicorn did not come up: {stderr.read_text()}"
            time.sleep(0.05)

    def executions(self, word: str = "done") -> Counter[int]:
        """How many times each leaf logged `word` (start or done)."""
        if not self.exec_log.exists():
            return Counter()
        lines = self.exec_log.read_text().splitlines()
        return Counter(int(line.split()[1]) for line in lines if line.split()[0] == word)

    def integrity(self) -> str:
        conn = sqlite3.connect(self.cache_dir / "asyncflow" / "index.sqlite")
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            conn.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    for server in env.servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def start_job(client: httpx.Client, n: int, delay: float) -> str:
    response = client.post("/jobs", json={"n": n, "delay": delay})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_job(client: httpx.Client, job_id: str, timeout: float = 20) -> dict:
    response = client.get(f"/jobs/{job_id}", params={"wait": timeout})
    response.raise_for_status()
    job = response.json()
    assert job["status"] != "running", job
    return job


def squares(n: int) -> int:
    return sum(i * i for i in range(n))


def test_job_lifecycle(env: Env) -> None:
    server = env.start()
    with server.client() as client:
        job_id = start_job(client, 3, 0.5)
        running = client.get(f"/jobs/{job_id}").json()
        assert running["status"] == "running"
        assert running["progress"] == {"leaves_done": 0, "leaves": 3}
        assert running["result"] is None
        job = wait_job(client, job_id)
        assert job["status"] == "done", job
        assert job["result"] == squares(3)
        assert job["progress"] == {"leaves_done": 3, "leaves": 3}
        assert job["stats"] == {"run": 4, "reused": 0, "leaves_run": 3, "leaves_reused": 0}
        # The same job again: everything comes from the cache.
        again = wait_job(client, start_job(client, 3, 0.5))
        assert again["result"] == squares(3)
        assert again["stats"]["run"] == 0
        assert client.get("/jobs/nope").status_code == 404
        assert client.post("/jobs", json={"n": 0}).status_code == 422
    assert env.executions() == Counter({0: 1, 1: 1, 2: 1})
    server.stop()


def test_overlapping_jobs_share_nodes(env: Env) -> None:
    server = env.start()
    with server.client() as client:
        small = start_job(client, 6, 0.4)
        big = start_job(client, 8, 0.4)
        small_job, big_job = wait_job(client, small), wait_job(client, big)
    assert (small_job["status"], big_job["status"]) == ("done", "done")
    assert small_job["result"] == squares(6)
    assert big_job["result"] == squares(8)
    # Leaves 0..5 were wanted by both jobs at once; each ran once.
    assert env.executions("start") == Counter(range(8))
    assert env.executions() == Counter(range(8))
    server.stop()


def test_client_disconnect_keeps_cache_consistent(env: Env) -> None:
    server = env.start()
    with server.client() as client:
        job_id = start_job(client, 4, 0.8)
        # A long-poll whose client gives up and drops the connection mid-request.
        with server.client(timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.get(f"/jobs/{job_id}", params={"wait": 30})
        # A raw connection closed half-way through sending its request.
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as raw:
            raw.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            raw.sendall(b'Content-Length: 100\r\n\r\n{"n": ')
        job = wait_job(client, job_id)
        assert job["status"] == "done", job
        assert job["result"] == squares(4)
        assert env.integrity() == "ok"
        nxt = wait_job(client, start_job(client, 5, 0.8))
        assert nxt["status"] == "done", nxt
        assert nxt["result"] == squares(5)
        assert nxt["stats"]["leaves_reused"] == 4
        assert nxt["stats"]["leaves_run"] == 1
    assert env.executions() == Counter(range(5))
    server.stop()
    assert env.integrity() == "ok"


def test_shutdown_cancels_job_and_restart_resumes(env: Env) -> None:
    n, delay = 8, 1.0  # 4 leaves at a time: a first wave ends at ~1 s, a second at ~2 s
    server = env.start()
    with server.client() as client:
        job_id = start_job(client, n, delay)
        deadline = time.monotonic() + 10
        while sum(env.executions("start").values()) < 5:  # the first wave done, the second started
            assert time.monotonic() < deadline, env.exec_log.read_text()
            time.sleep(0.02)
    began = time.monotonic()
    server.stop(signal.SIGTERM)
    assert time.monotonic() - began < 5
    assert f"job {job_id} cancelled" in server.stderr.read_text()  # the app's own log line
    finished = set(env.executions())
    started = set(env.executions("start"))
    assert len(finished) == 4, env.exec_log.read_text()
    assert started - finished, "some leaves must have been cancelled mid-way"
    assert env.integrity() == "ok"

    server = env.start()
    with server.client() as client:
        job = wait_job(client, start_job(client, n, delay))
    assert job["status"] == "done", job
    assert job["result"] == squares(n)
    # Finished leaves were kept; the cancelled ones left nothing behind and ran again.
    assert job["stats"]["leaves_reused"] == len(finished)
    assert job["stats"]["leaves_run"] == n - len(finished)
    assert env.executions() == Counter(range(n))
    server.stop(signal.SIGINT)
    assert env.integrity() == "ok"
