"""The web view: `asyncflow serve` in a real subprocess, read over HTTP and in a real headless Chromium.

Runs are real too (``asyncflow run`` in subprocesses, on a taskfile written to tmp_path).
The browser tests drive Debian's chromium with Playwright; they skip without it, and
fail instead under ASYNCFLOW_REQUIRE_SERVICES=1 (CI installs both). With
ASYNCFLOW_UPDATE_SCREENSHOTS=1 they also copy their screenshots to docs/, for the README.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from asyncflow._cache.history import GraphNode, RunGraph
from asyncflow._cache.store import Attempt, RunRow
from asyncflow.web._pages import run_live
from asyncflow.web._svg import render_svg

from .service_env import REQUIRED
from .test_cli import _env, cli
from .test_fastapi_app import free_port

FLOW = """
import time
from pathlib import Path

import asyncflow
from asyncflow import Requires, RequiresList, Task

GATE = Path(__file__).with_name("gate")


class Leaf(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        while not GATE.exists():  # the test opens the gate once it has seen the run going
            time.sleep(0.02)
        print(f"leaf {self.i} says hi")
        if self.i == 3:
            raise ValueError("three is a bad number")
        return self.i


class Gather(Task):
    async def run_task(self) -> int:
        return sum(await asyncflow.gather(Leaf(10), Leaf(11)))


class Main(Task):
    leaves: RequiresList[int]
    gathered: Requires[int]

    def build_task(self, n: int = 3) -> None:
        self.leaves = [Leaf(i) for i in range(n)]
        self.gathered = Gather()

    async def run_task(self) -> int:
        return sum(self.leaves) + self.gathered
"""

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Served:
    url: str
    cache: Path
    flow: Path
    proc: subprocess.Popen[str]

    def run(self, *args: str, gate: bool = True) -> subprocess.Popen[str]:
        """Start `asyncflow run` on the taskfile (its bodies wait for the gate unless `gate`)."""
        if gate:
            (self.flow.parent / "gate").touch()
        command = [sys.executable, "-m", "asyncflow", "run", str(self.flow), "--cache-dir", str(self.cache)]
        return subprocess.Popen(
            [*command, *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    flow = tmp_path / "flow.py"
    flow.write_text(textwrap.dedent(FLOW))
    cache = tmp_path / "cache"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncflow",
            "serve",
            "--cache-dir",
            str(cache),
            "--port",
            str(port),
            "--poll",
            "0.1",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"asyncflow serve did not come up: {proc.communicate()[0]}")
            time.sleep(0.1)
    try:
        yield Served(url, cache, flow, proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("asyncflow serve did not stop on Ctrl-C")
        assert proc.returncode == 0, out
        assert "Traceback" not in out, out


def _ended(proc: subprocess.Popen[str], status: int) -> None:
    """Wait for a run to end, and check its exit status."""
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == status, out


def test_serve_help_lists_its_options(tmp_path: Path) -> None:
    done = cli("serve", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--cache-dir", "--host", "--port", "--poll"):
        assert option in done.stdout
    assert "127.0.0.1" in done.stdout


def test_pages_show_runs_a_run_and_a_failed_task(served: Served) -> None:
    first = served.run()
    _ended(first, 0)
    second = served.run("--n", "5")
    _ended(second, 1)

    runs = served.get("/")
    assert runs.status_code == 200
    assert runs.headers["content-type"].startswith("text/html")
    assert runs.text.count('class="run"') == 2
    assert "Main(5)" in runs.text
    assert "Main(3)" in runs.text
    assert '<span class="badge failed">failed</span>' in runs.text

    index = runs.text.index("Main(5)")
    run_link = runs.text.rindex('href="/runs/', 0, index)
    run_path = runs.text[run_link + 6 : runs.text.index('"', run_link + 6)]
    page = served.get(run_path)
    assert page.status_code == 200
    assert page.text.count('<g class="node') == 9  # Main, Gather, Leaf 0-4, Leaf 10-11
    assert '<g class="node failed" data-key="flow.Leaf(3)">' in page.text
    assert 'class="node skipped" data-key="flow.Main(5)"' in page.text
    assert 'class="node reused" data-key="flow.Leaf(0)"' in page.text
    assert 'stroke-dasharray="5,4"' in page.text  # Gather's awaited leaves: dashed edges
    assert "ValueError: three is a bad number" in page.text  # the attempts table

    svg = served.get(run_path + "/graph.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg")

    task = served.get("/tasks/" + quote("flow.Leaf(3)", safe=""))
    assert task.status_code == 200
    assert "Traceback (most recent call last)" in task.text
    assert "ValueError: three is a bad number" in task.text
    assert "leaf 3 says hi" in task.text
    fine = served.get("/tasks/" + quote("flow.Leaf(1)", safe=""))
    assert "version" in fine.text
    assert "leaf 1 says hi" in fine.text

    assert served.get("/runs/nope").status_code == 404
    assert served.get("/tasks/flow.Nothing()").status_code == 404


def test_a_run_killed_shows_as_died(served: Served) -> None:
    run = served.run(gate=False)  # its bodies wait at the gate
    deadline = time.monotonic() + 30
    while "badge running" not in served.get("/").text:
        assert time.monotonic() < deadline, "the run never showed as running"
        time.sleep(0.1)
    run.kill()  # kill -9: it writes nothing more
    _ended(run, -signal.SIGKILL)
    page = served.get("/").text
    assert '<span class="badge died">died</span>' in page
    runs = cli("runs", "--cache-dir", served.cache, cwd=served.cache.parent)
    assert " died " in runs.stdout


def test_the_view_only_reads(served: Served) -> None:
    proc = served.run()
    _ended(proc, 0)
    index = served.cache / "asyncflow" / "index.sqlite"
    # SQLite's shared-memory and (empty) log files of a reader are no writes.
    before = {
        p: p.stat().st_mtime_ns for p in served.cache.rglob("*") if p.is_file() and "sqlite-" not in p.name
    }
    for path in ("/", "/tasks/" + quote("flow.Leaf(1)", safe="")):
        assert served.get(path).status_code == 200
    for method in ("POST", "PUT", "DELETE"):
        assert httpx.request(method, served.url + "/", timeout=10).status_code == 405
    after = {
        p: p.stat().st_mtime_ns for p in served.cache.rglob("*") if p.is_file() and "sqlite-" not in p.name
    }
    assert after == before
    wal = index.with_name("index.sqlite-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert index in after


def test_the_view_binds_to_this_machine_only(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncflow", "serve", "--cache-dir", str(tmp_path), "--port", str(port)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            listening = subprocess.run(
                ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
            ).stdout
            if listening.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        local = [line.split()[3] for line in listening.splitlines()]  # State Recv-Q Send-Q Local Peer
        assert local == [f"127.0.0.1:{port}"]
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text.count("No runs recorded") == 1
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/" in out


@pytest.fixture
def ran_once(tmp_path: Path) -> Path:
    """A cache holding one run of the taskfile."""
    flow = tmp_path / "flow.py"
    flow.write_text(textwrap.dedent(FLOW))
    (tmp_path / "gate").touch()
    done = cli("run", flow, "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "cache"


async def test_mounted_in_a_fastapi_app(ran_once: Path) -> None:
    from fastapi import FastAPI

    import asyncflow.web

    api = FastAPI()
    api.mount("/workflows", asyncflow.web.app(ran_once))
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        page = await client.get("/workflows/")
        assert page.status_code == 200
        assert 'href="/workflows/runs/' in page.text
        run_path = page.text.split('href="/workflows/runs/', 1)[1].split('"', 1)[0]
        run = await client.get("/workflows/runs/" + run_path)
        assert 'href="/workflows/tasks/flow.Leaf%281%29"' in run.text
        task = await client.get("/workflows/tasks/flow.Leaf%281%29")
        assert task.status_code == 200
        assert "leaf 1 says hi" in task.text


def test_importing_asyncflow_imports_no_web_server() -> None:
    code = "import sys, asyncflow; print(any(m.split('.')[0] in ('starlette', 'uvicorn') or m == 'asyncflow.web' for m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    assert done.stdout.strip() == "False"


# In a real browser.

browser = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRED, reason="needs Debian's chromium (apt-get install chromium)"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip("needs playwright (pip install playwright)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _shot(page: object, tmp_path: Path, name: str) -> None:
    """Screenshot the page; with ASYNCFLOW_UPDATE_SCREENSHOTS=1 also into docs/ for the README."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    assert path.stat().st_size > 1000
    if os.environ.get("ASYNCFLOW_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)


@browser
def test_browser_runs_page_follows_a_run_and_a_failed_task_shows_its_traceback(
    served: Served, chromium: object, tmp_path: Path
) -> None:
    gate = served.flow.parent / "gate"
    done = served.run()  # a first run: the second reuses some
    _ended(done, 0)
    gate.unlink()

    page = chromium.new_page(viewport={"width": 1280, "height": 720})  # type: ignore[attr-defined]
    page.goto(served.url + "/")
    page.wait_for_selector("#status:text('live')")
    page.evaluate("window.notReloaded = true")
    assert page.locator("tr.run").count() == 1

    run = served.run("--n", "5", gate=False)  # its bodies wait at the gate
    try:
        page.wait_for_selector("tr.run:nth-child(1) .badge.running", timeout=30_000)
        assert page.locator("tr.run").count() == 2
        _shot(page, tmp_path, "web-runs.png")
        gate.touch()
        page.wait_for_selector("tr.run:nth-child(1) .badge.failed", timeout=30_000)
    finally:
        gate.touch()
        _ended(run, 1)
    assert page.evaluate("window.notReloaded") is True  # updated in place, not reloaded
    assert page.locator("tr.run:nth-child(1) td.count-failed").inner_text() == "1"

    page.click("tr.run:nth-child(1) a")
    page.wait_for_selector("svg.graph")
    nodes = page.locator("svg.graph g.node")
    assert nodes.count() == 9
    box = page.locator("svg.graph").bounding_box()
    assert box is not None
    assert box["width"] > 300
    assert box["height"] > 100
    _shot(page, tmp_path, "web-run.png")

    page.click("svg.graph g.node.failed")
    page.wait_for_selector("details.output pre")
    output = page.locator("details.output pre").first.inner_text()
    assert "Traceback (most recent call last)" in output
    assert "ValueError: three is a bad number" in output
    assert page.locator("h1").inner_text() == "Leaf(3)"
    _shot(page, tmp_path, "web-task.png")


@browser
def test_browser_run_page_follows_its_run(served: Served, chromium: object) -> None:
    run = served.run(gate=False)
    try:
        deadline = time.monotonic() + 30
        while "badge running" not in (runs := served.get("/").text):
            assert time.monotonic() < deadline, "the run never showed as running"
            time.sleep(0.1)
        run_path = runs.split('href="/runs/', 1)[1].split('"', 1)[0]
        page = chromium.new_page()  # type: ignore[attr-defined]
        page.goto(f"{served.url}/runs/{run_path}")
        page.wait_for_selector("#status:text('live')")
        assert page.locator("svg.graph g.node.pending").count() >= 4
        (served.flow.parent / "gate").touch()
        page.wait_for_selector("#status:text('finished')", timeout=30_000)
        assert page.locator("svg.graph g.node.ran").count() == 7
        assert page.locator("svg.graph g.node.pending").count() == 0
    finally:
        (served.flow.parent / "gate").touch()
        _ended(run, 0)


@browser
def test_browser_pages_work_without_javascript(served: Served, chromium: object) -> None:
    proc = served.run("--n", "5", "--on-error", "continue")  # Gather runs on: 9 nodes
    _ended(proc, 1)
    context = chromium.new_context(java_script_enabled=False)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(served.url + "/")
    assert page.locator("tr.run").count() == 1
    assert page.locator("tr.run .badge.failed").count() == 1
    with page.expect_navigation():  # and its load: the page is counted whole, not as it streams in
        page.click("tr.run a")
    assert page.locator("svg.graph g.node").count() == 9
    with page.expect_navigation():
        page.click("svg.graph g.node.failed")
    assert "ValueError: three is a bad number" in page.locator("details.output pre").first.inner_text()
    context.close()


# The pages and the drawing, pure.


def _graph(n: int) -> dict[str, GraphNode]:
    leaves = {f"m.Leaf({i})": GraphNode(f"m.Leaf({i})", "m.Leaf", False, (), state="ran") for i in range(n)}
    root = GraphNode("m.Root()", "m.Root", True, tuple(leaves), awaited=["m.Leaf(0)"], state="failed")
    return {**leaves, "m.Root()": root}


def test_a_big_graph_is_drawn_one_box_per_class() -> None:
    svg = render_svg(_graph(60), lambda key: "/tasks/" + key)
    assert svg.count('<g class="node') == 2
    assert '<g class="node ran" data-key="m.Leaf">' in svg
    assert '<g class="node failed" data-key="m.Root">' in svg
    assert ">Leaf x60</text>" in svg
    assert ">60</text>" in svg  # the edge: 60 node edges
    assert ">1 awaited</text>" in svg
    small = render_svg(_graph(3), lambda key: "/tasks/" + key)
    assert small.count('<g class="node') == 4
    assert '<a href="/tasks/m.Root()">' in small


def test_a_run_page_lists_the_failed_attempts_and_the_latest_others() -> None:
    run = RunRow("h:1:t", "m.Root()", "Root()", 0.0, 1.0, "failed", "{}", "h", 1, "{}")
    attempts = [Attempt("h:1:t", f"m.Leaf({i})", 0, i, i + 0.5, "thread", "ok", None) for i in range(500)]
    attempts[3] = attempts[3]._replace(outcome="failed", error="Leaf(3) failed: boom")
    markup = run_live("", run, RunGraph({}, False), attempts)
    assert markup.count('<tr class="attempt') == 101
    assert "Leaf(3) failed: boom" in markup
    assert ">Leaf(499)<" in markup
    assert ">Leaf(398)<" not in markup
    assert "399 more attempts that ended well are not shown" in markup
