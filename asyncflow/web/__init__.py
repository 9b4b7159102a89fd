"""A live, read-only web view of a cache's history: runs, a run's graph and attempts, a task's output.

`app` returns an ASGI application (Starlette) to serve with any ASGI server, or to mount
in a FastAPI app::

    app.mount("/workflows", asyncflow.web.app("/data/cache"))

``asyncflow serve`` serves it on 127.0.0.1. It only reads the index (a read-only SQLite
connection) and the output files: no request runs a task, unpickles a result or writes
to the cache. Pages are server-rendered HTML that work without JavaScript; with it, the
runs page and a running run's page follow server-sent events, sent when the index
changes (polled every `poll` seconds). Needs the ``web`` extra: ``pip install
'asyncflow[web]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as _no_starlette:  # pragma: no cover - the extra is installed wherever tests run
    raise ImportError(
        f"asyncflow.web needs Starlette ({_no_starlette}); install it with: pip install 'asyncflow[web]'"
    ) from _no_starlette

import anyio

from .._cache.history import Reader
from .._cache.store import read_log
from .._options import resolve_cache_dir
from . import _pages
from ._svg import render_svg

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from starlette.requests import Request

__all__ = ["app"]

_RUNS = 50  # runs on the runs page
_ATTEMPTS = 20  # attempts on a task page
_KEEPALIVE = 15.0  # seconds between comments on an idle event stream


def app(cache_dir: str | os.PathLike[str] | None = None, *, poll: float = 0.5) -> Starlette:
    """Return the web view of the cache in `cache_dir` as an ASGI application.

    Args:
        cache_dir: the cache to show, as the ``cache_dir`` run option takes it (default:
            ``$AF_CACHE_DIR``, else ``./.cache``). It need not exist yet.
        poll: seconds between looks at the index for changes, while a page follows a run.

    Returns:
        A Starlette application with the pages ``/`` (runs), ``/runs/{id}``,
        ``/runs/{id}/graph.svg`` and ``/tasks/{key}``, and the event streams
        ``/events`` and ``/runs/{id}/events``. Only GET (and HEAD) requests are answered.
    """
    where = resolve_cache_dir(cache_dir)
    return Starlette(routes=_routes(where, poll))


def _routes(where: Path, poll: float) -> list[Route]:
    shown = str(where)

    def root_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def read(fn: Callable[[Reader], Any]) -> Any:
        """Run `fn` with a reader of the index on a worker thread (a connection per request)."""

        def call() -> Any:
            reader = Reader(where)
            try:
                return fn(reader)
            finally:
                reader.close()

        return await anyio.to_thread.run_sync(call)

    async def runs(request: Request) -> Response:
        found = await read(lambda r: r.runs(_RUNS))
        return HTMLResponse(_pages.runs_page(root_of(request), shown, found))

    async def run(request: Request) -> Response:
        run_id = request.path_params["run"]
        root = root_of(request)

        def get(r: Reader) -> Any:
            row = r.run(run_id)
            if row is None:
                return None
            tried = r.attempts(row.id)
            return row, r.graph(row, tried), tried

        found = await read(get)
        if found is None:
            return _missing(root, shown, f"No run {run_id} in the history of {shown}.")
        return HTMLResponse(_pages.run_page(root, shown, *found))

    async def graph_svg(request: Request) -> Response:
        run_id = request.path_params["run"]
        root = root_of(request)

        def get(r: Reader) -> Any:
            row = r.run(run_id)
            return None if row is None else r.graph(row)

        graph = await read(get)
        if graph is None:
            return Response(f"no run {run_id}\n", status_code=404, media_type="text/plain")
        svg = render_svg(graph.nodes, lambda key: _pages.task_href(root, key))
        return Response(svg, media_type="image/svg+xml")

    async def task(request: Request) -> Response:
        key = request.path_params["key"]

        def get(r: Reader) -> Any:
            tried = r.attempts_of_node(key, _ATTEMPTS)
            return r.task(key), tried, [read_log(where, a) for a in tried]

        record, tried, outputs = await read(get)
        root = root_of(request)
        if record.version is None and record.failure is None and not tried:
            return _missing(root, shown, f"The cache in {shown} knows no task {key}.")
        return HTMLResponse(_pages.task_page(root, shown, record, tried, outputs))

    async def runs_events(request: Request) -> Response:
        root = root_of(request)

        def table(r: Reader) -> tuple[str, bool]:
            return _pages.runs_table(root, r.runs(_RUNS)), False

        return _stream(where, poll, table)

    async def run_events(request: Request) -> Response:
        run_id = request.path_params["run"]
        root = root_of(request)

        def live(r: Reader) -> tuple[str, bool] | None:
            row = r.run(run_id)
            if row is None:
                return None
            tried = r.attempts(row.id)
            return _pages.run_live(root, row, r.graph(row, tried), tried), row.outcome != "running"

        return _stream(where, poll, live)

    return [
        Route("/", runs),
        Route("/events", runs_events),
        Route("/runs/{run}", run),
        Route("/runs/{run}/graph.svg", graph_svg),
        Route("/runs/{run}/events", run_events),
        Route("/tasks/{key:path}", task),
    ]


def _missing(root: str, shown: str, what: str) -> Response:
    return HTMLResponse(_pages.not_found(root, shown, what), status_code=404)


def _stream(where: Path, poll: float, render: Callable[[Reader], tuple[str, bool] | None]) -> Response:
    """Answer with server-sent events: `render`'s markup each time the index changes.

    `render` gives the markup and whether it is the last (the run ended), or None when
    there is nothing to show (the run is gone): the stream ends with an "end" event then.
    """

    async def events() -> AsyncIterator[str]:
        reader = Reader(where)
        try:
            seen: int | None = None
            quiet = 0.0
            while True:
                changed, seen = await anyio.to_thread.run_sync(reader.changed_since, seen)
                if changed:
                    rendered = await anyio.to_thread.run_sync(render, reader)
                    if rendered is not None:
                        yield _event(rendered[0])
                    if rendered is None or rendered[1]:
                        yield "event: end\ndata: \n\n"
                        return
                    quiet = 0.0
                elif quiet >= _KEEPALIVE:
                    yield ": still here\n\n"  # a comment: proxies keep the connection open
                    quiet = 0.0
                await anyio.sleep(poll)
                quiet += poll
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(reader.close)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _event(markup: str) -> str:
    """Frame `markup` as one server-sent event (each of its lines a ``data:`` line)."""
    return "".join(f"data: {line}\n" for line in markup.split("\n")) + "\n"
