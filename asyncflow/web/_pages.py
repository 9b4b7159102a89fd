"""The web view's pages as HTML: the runs, one run (its graph and attempts), one task (its attempts and output).

Pure (no I/O): each function takes what the history holds and returns markup. Every
page is whole without JavaScript; a page that changes while a run goes on has one
``live`` region, which a few lines of script replace with what the server sends
(server-sent events, see `web.app`). Everything shown is escaped: keys and output are
the user's text. Addresses are relative to `root`, where the app is mounted.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import quote

from .._cache.history import counts, label_of
from ._svg import PALETTE, render_svg

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._cache.history import RunGraph, TaskRecord
    from .._cache.store import Attempt, RunRow

_LISTED = 100  # attempts a run's page lists of each kind (failed, the latest that went well)

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #263238; color: #fff; padding: 10px 20px; display: flex; gap: 18px; align-items: baseline; }
header a { color: #fff; font-weight: 600; text-decoration: none; }
header .where { color: #b0bec5; font-family: monospace; font-size: 12px; }
#status { margin-left: auto; font-size: 12px; color: #b0bec5; }
main { padding: 16px 20px; }
h1 { font-size: 20px; margin: 4px 0 12px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
table { border-collapse: collapse; background: #fff; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #eceff1; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.badge { border-radius: 10px; padding: 1px 8px; font-size: 12px; font-weight: 600; }
.ok { background: #d4edda; color: #1b4d20; } .failed, .error { background: #f8d7da; color: #6d1212; }
.running { background: #dbe9f9; color: #123a66; } .cancelled, .died { background: #eee; color: #555; }
.bar { width: 120px; height: 8px; background: #e0e0e0; border-radius: 4px; overflow: hidden; display: inline-block; }
.bar span { display: block; height: 100%; background: #1f5fa8; }
pre { background: #263238; color: #eceff1; padding: 10px; overflow: auto; max-height: 480px; font-size: 12px; }
.graph-box { overflow: auto; background: #fff; border: 1px solid #e0e0e0; max-height: 640px; }
.legend span { margin-right: 12px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; border: 1px solid; vertical-align: -2px; margin-right: 4px; }
.muted { color: #757575; } code { font-size: 12px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; } dt { color: #757575; } dd { margin: 0; }
"""

# Replaces the page's live region with each event's markup; closes on the "end" event.
_SCRIPT = """<script>
(function () {
  var live = document.getElementById("live"), status = document.getElementById("status");
  var source = new EventSource(%s);
  source.onopen = function () { status.textContent = "live"; };
  source.onmessage = function (event) { live.innerHTML = event.data; };
  source.addEventListener("end", function () { source.close(); status.textContent = "finished"; });
  source.onerror = function () { status.textContent = "reconnecting"; };
})();
</script>"""


def page(root: str, cache_dir: str, title: str, body: str, events: str | None = None) -> str:
    """Return a whole page: `body` under the header; with `events`, its live region follows that event stream."""
    script = _SCRIPT % json.dumps(events) if events else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - asyncflow</title><style>{_CSS}</style></head><body>"
        f'<header><a href="{escape(root)}/">asyncflow runs</a>'
        f'<span class="where">{escape(cache_dir)}</span><span id="status"></span></header>'
        f"<main>{body}</main>{script}</body></html>\n"
    )


def run_href(root: str, run: str) -> str:
    return f"{root}/runs/{quote(run, safe='')}"


def task_href(root: str, key: str) -> str:
    return f"{root}/tasks/{quote(key, safe='')}"


def when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _took(run: RunRow) -> str:
    end = run.ended if run.ended is not None else (time.time() if run.outcome == "running" else None)
    return "-" if end is None else f"{end - run.started:.2f} s"


def _badge(outcome: str) -> str:
    return f'<span class="badge {escape(outcome)}">{escape(outcome)}</span>'


def _progress(run: RunRow) -> str:
    c = counts(run)
    total = c.get("total", 0)
    done = sum(c.get(k, 0) for k in ("run", "reused", "failed", "skipped"))
    if not total:
        return '<span class="muted">-</span>'
    share = min(100.0, 100.0 * done / total)
    return f'<span class="bar"><span style="width:{share:.0f}%"></span></span> <span class="done">{done}/{total}</span>'


def runs_table(root: str, runs: Sequence[RunRow]) -> str:
    """The runs, the latest first, as a table (the runs page's live region)."""
    if not runs:
        return '<p class="muted">No runs recorded in this cache yet.</p>'
    rows: list[str] = []
    for run in runs:
        c = counts(run)
        cells = "".join(
            f'<td class="n count-{k}">{c.get(k, 0)}</td>' for k in ("run", "reused", "failed", "skipped")
        )
        running = (
            f' <span class="muted">({c["running"]} running)</span>'
            if run.outcome == "running" and c.get("running")
            else ""
        )
        rows.append(
            f'<tr id="run-{escape(run.id)}" class="run"><td>{when(run.started)}</td><td class="n">{_took(run)}</td>'
            f'<td class="outcome">{_badge(run.outcome)}</td><td>{_progress(run)}{running}</td>{cells}'
            f'<td><a href="{escape(run_href(root, run.id))}">{escape(run.entrypoint)}</a></td>'
            f"<td>{escape(run.host)}:{run.pid}</td></tr>"
        )
    return (
        "<table><thead><tr><th>started</th><th>took</th><th>outcome</th><th>progress</th><th>run</th>"
        "<th>reused</th><th>failed</th><th>skipped</th><th>entrypoint</th><th>where</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def runs_page(root: str, cache_dir: str, runs: Sequence[RunRow]) -> str:
    body = f'<h1>Runs</h1><div id="live">{runs_table(root, runs)}</div>'
    return page(root, cache_dir, "Runs", body, f"{root}/events")


def _legend() -> str:
    items = "".join(
        f'<span><i style="background:{fill};border-color:{border}"></i>{state}</span>'
        for state, (fill, border, _) in PALETTE.items()
    )
    return f'<p class="legend">{items}<span class="muted">dashed edge: awaited by its body</span></p>'


def run_live(root: str, run: RunRow, graph: RunGraph, attempts: Sequence[Attempt]) -> str:
    """A run's summary, graph and attempts (the run page's live region)."""
    c = counts(run)
    summary = (
        f"<dl><dt>outcome</dt><dd>{_badge(run.outcome)}</dd><dt>started</dt><dd>{when(run.started)}</dd>"
        f"<dt>took</dt><dd>{_took(run)}</dd><dt>progress</dt><dd>{_progress(run)}</dd>"
        "<dt>counts</dt><dd>"
        + ", ".join(f"{c.get(k, 0)} {k}" for k in ("run", "reused", "failed", "retried", "skipped"))
        + f"</dd><dt>where</dt><dd>{escape(run.host)}, pid {run.pid}</dd></dl>"
    )
    if graph.nodes:
        svg = render_svg(graph.nodes, lambda key: task_href(root, key))
        note = "" if graph.complete else '<p class="muted">Only part of this run\'s graph is recorded.</p>'
        drawing = f'<h2>Graph</h2>{_legend()}{note}<div class="graph-box">{svg}</div>'
    else:
        drawing = '<h2>Graph</h2><p class="muted">This run\'s graph is not recorded (too big, or an older asyncflow ran it).</p>'
    shown = _some(attempts)
    hidden = len(attempts) - len(shown)
    more = f'<p class="muted">{hidden} more attempts that ended well are not shown.</p>' if hidden else ""
    return summary + drawing + "<h2>Attempts</h2>" + attempts_table(root, shown, with_task=True) + more


def _some(attempts: Sequence[Attempt]) -> Sequence[Attempt]:
    """The attempts a run's page lists: all that did not end well (up to `_LISTED`) and the latest others."""
    if len(attempts) <= 2 * _LISTED:
        return attempts
    bad = {id(a) for a in [a for a in attempts if a.outcome != "ok"][:_LISTED]}
    good = {id(a) for a in [a for a in attempts if a.outcome == "ok"][-_LISTED:]}
    return [a for a in attempts if id(a) in bad or id(a) in good]


def run_page(root: str, cache_dir: str, run: RunRow, graph: RunGraph, attempts: Sequence[Attempt]) -> str:
    options = json.dumps(json.loads(run.options), indent=1) if run.options else "{}"
    body = (
        f'<h1>{escape(run.entrypoint)} <span class="muted">run {escape(run.id)}</span></h1>'
        f'<div id="live">{run_live(root, run, graph, attempts)}</div>'
        f"<h2>Options</h2><pre>{escape(options)}</pre>"
    )
    events = f"{run_href(root, run.id)}/events" if run.outcome == "running" else None
    return page(root, cache_dir, run.entrypoint, body, events)


def attempts_table(root: str, attempts: Sequence[Attempt], *, with_task: bool) -> str:
    if not attempts:
        return '<p class="muted">No attempt recorded (nothing ran, or not yet).</p>'
    rows: list[str] = []
    for a in attempts:
        first = (
            f'<td><a href="{escape(task_href(root, a.key))}">{escape(label_of(a.key))}</a></td>'
            if with_task
            else f'<td><a href="{escape(run_href(root, a.run))}">{escape(a.run)}</a></td>'
        )
        error = f'<br><span class="error-text">{escape(a.error)}</span>' if a.error else ""
        rows.append(
            f'<tr class="attempt {escape(a.outcome)}">{first}<td class="n">{a.attempt}</td>'
            f'<td>{when(a.started)}</td><td class="n">{a.ended - a.started:.3f} s</td>'
            f"<td>{escape(a.place)}</td><td>{_badge(a.outcome)}{error}</td></tr>"
        )
    head = "task" if with_task else "run"
    return (
        f"<table><thead><tr><th>{head}</th><th>attempt</th><th>started</th><th>took</th><th>where</th>"
        f"<th>outcome</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def task_page(
    root: str, cache_dir: str, record: TaskRecord, attempts: Sequence[Attempt], outputs: Sequence[str]
) -> str:
    """One task: what the index holds about it, its latest attempts, and what each printed and logged."""
    label = label_of(record.key)
    facts = [f"<dt>key</dt><dd><code>{escape(record.key)}</code></dd>"]
    if record.version is not None:
        size = "" if record.size is None else f", {record.size} bytes"
        facts.append(f"<dt>result</dt><dd>version <code>{escape(record.version)}</code>{size}</dd>")
        facts.append(f"<dt>computed</dt><dd>{when(record.finished)}</dd>")
    else:
        facts.append("<dt>result</dt><dd>none in the cache</dd>")
    if record.failure:
        facts.append(
            f'<dt>last failure</dt><dd class="error-text">{escape(record.failure.splitlines()[0])}</dd>'
        )
    body = [f"<h1>{escape(label)}</h1><dl>{''.join(facts)}</dl>", "<h2>Attempts</h2>"]
    body.append(attempts_table(root, attempts, with_task=False))
    for i, (a, text) in enumerate(zip(attempts, outputs, strict=True)):
        title = f"attempt {a.attempt} of run {a.run}: {a.outcome}"
        content = (
            f"<pre>{escape(text)}</pre>" if text else '<p class="muted">It printed and logged nothing.</p>'
        )
        opened = " open" if i == 0 else ""
        body.append(
            f'<details class="output"{opened}><summary>Output of {escape(title)}</summary>{content}</details>'
        )
    return page(root, cache_dir, label, "".join(body))


def not_found(root: str, cache_dir: str, what: str) -> str:
    return page(
        root,
        cache_dir,
        "Not found",
        f'<h1>Not found</h1><p>{escape(what)}</p><p><a href="{escape(root)}/">All runs</a></p>',
    )
