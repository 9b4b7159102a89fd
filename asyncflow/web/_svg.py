"""A run's graph drawn as SVG, laid out here: no Graphviz, no JavaScript, nothing fetched.

Pure (no I/O). Nodes go in columns by depth (a node sits right of everything it reads,
the tasks its body awaited included), ordered in their column by where their upstream
sits. Each node links to its task's page. A graph of more than `GROUP_OVER` nodes is
drawn one box per task class with counts, as `asyncflow graph` does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from html import escape
from typing import TYPE_CHECKING

from .._render import AWAITED_COLOR, COLORS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._cache.history import GraphNode

GROUP_OVER = 50  # as `asyncflow graph`

# (fill, border, text) per node state; those `asyncflow graph` has keep its colours.
PALETTE: dict[str, tuple[str, str, str]] = {
    "reused": COLORS["fresh"],
    "ran": ("#dbe9f9", "#1f5fa8", "#123a66"),
    "failed": COLORS["failed"],
    "pending": COLORS["stale"],
    "skipped": ("#eeeeee", "#9e9e9e", "#555555"),
    "cancelled": ("#eeeeee", "#9e9e9e", "#555555"),
}
# The worst first: a class box takes the colour of its worst node.
_WORST = ("failed", "cancelled", "pending", "skipped", "ran", "reused")

_W, _H = 190, 44  # a node's box
_GAP_X, _GAP_Y, _PAD = 70, 14, 16
_CHARS = 26  # of a label that fit in a box


class _Box:
    __slots__ = ("href", "id", "label", "lines", "state", "title")

    def __init__(self, id: str, label: str, lines: str, state: str, title: str, href: str | None) -> None:
        self.id = id
        self.label = label
        self.lines = lines
        self.state = state
        self.title = title
        self.href = href


def render_svg(nodes: Mapping[str, GraphNode], href: Callable[[str], str]) -> str:
    """Draw `nodes` (a run's graph, deps first) as an SVG document; `href` gives a task page's address from its key."""
    if len(nodes) > GROUP_OVER:
        boxes, edges = _grouped(nodes)
    else:
        boxes, edges = _single(nodes, href)
    return _draw(boxes, edges)


def _single(
    nodes: Mapping[str, GraphNode], href: Callable[[str], str]
) -> tuple[list[_Box], list[tuple[str, str, str]]]:
    boxes: list[_Box] = []
    edges: list[tuple[str, str, str]] = []
    for node in nodes.values():
        title = f"{node.label}: {node.state}" + (f" ({node.error})" if node.error else "")
        boxes.append(_Box(node.key, node.label, node.state, node.state, title, href(node.key)))
        edges += [(dep, node.key, "") for dep in node.deps if dep in nodes]
        edges += [(child, node.key, "awaited") for child in node.awaited if child in nodes]
    return boxes, edges


def _grouped(nodes: Mapping[str, GraphNode]) -> tuple[list[_Box], list[tuple[str, str, str]]]:
    states: dict[str, Counter[str]] = defaultdict(Counter)
    links: Counter[tuple[str, str, bool]] = Counter()
    for node in nodes.values():
        states[node.task_name][node.state] += 1
        for dep in node.deps:
            if dep in nodes:
                links[nodes[dep].task_name, node.task_name, False] += 1
        for child in node.awaited:
            if child in nodes:
                links[nodes[child].task_name, node.task_name, True] += 1
    boxes: list[_Box] = []
    for name, counts in states.items():
        worst = next(s for s in _WORST if counts[s])
        tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: _WORST.index(i[0])))
        short = name.rsplit(".", 1)[-1]
        total = sum(counts.values())
        boxes.append(_Box(name, f"{short} x{total}", tally, worst, f"{name}: {total} nodes: {tally}", None))
    edges = [(a, b, f"{n} awaited" if awaited else str(n)) for (a, b, awaited), n in links.items() if a != b]
    return boxes, edges


def _columns(boxes: list[_Box], edges: Iterable[tuple[str, str, str]]) -> list[list[_Box]]:
    """Place each box in the column after the furthest of its upstream, ordered by where its upstream sits."""
    upstream: dict[str, list[str]] = defaultdict(list)
    downstream: dict[str, list[str]] = defaultdict(list)
    for a, b, _ in edges:
        upstream[b].append(a)
        downstream[a].append(b)
    waiting = {box.id: len(upstream[box.id]) for box in boxes}
    depth = dict.fromkeys(waiting, 0)
    ready = [box.id for box in boxes if waiting[box.id] == 0]
    while ready:  # Kahn's order: a class graph may have cycles, whose boxes stay at 0
        at = ready.pop()
        for nxt in downstream[at]:
            depth[nxt] = max(depth[nxt], depth[at] + 1)
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    for box in boxes:  # a source sits just left of its first reader: its edges cross no column
        if not upstream[box.id] and downstream[box.id]:
            depth[box.id] = max(0, min(depth[d] for d in downstream[box.id]) - 1)
    columns: list[list[_Box]] = [[] for _ in range(max(depth.values(), default=0) + 1)]
    for box in boxes:
        columns[depth[box.id]].append(box)
    row: dict[str, float] = {}
    for column in columns:  # one sweep of barycentres: few crossings on the usual shapes
        column.sort(key=lambda b: _mean(row.get(u, 0.0) for u in upstream[b.id]))
        for i, box in enumerate(column):
            row[box.id] = i
    return columns


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def _draw(boxes: list[_Box], edges: list[tuple[str, str, str]]) -> str:
    columns = _columns(boxes, edges)
    tallest = max((len(c) for c in columns), default=0)
    height = _PAD * 2 + max(1, tallest) * (_H + _GAP_Y)
    width = _PAD * 2 + len(columns) * (_W + _GAP_X)
    at: dict[str, tuple[float, float]] = {}
    for i, column in enumerate(columns):
        top = (height - len(column) * (_H + _GAP_Y)) / 2
        for j, box in enumerate(column):
            at[box.id] = (_PAD + i * (_W + _GAP_X), top + j * (_H + _GAP_Y))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height:.0f}" '
        f'viewBox="0 0 {width} {height:.0f}" role="img" aria-label="task graph">',
        "<defs>"
        '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker>'
        '<marker id="arrow-awaited" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{AWAITED_COLOR}"/>'
        "</marker></defs>",
    ]
    for a, b, label in edges:
        if a not in at or b not in at:
            continue
        (x1, y1), (x2, y2) = at[a], at[b]
        x1, y1, y2 = x1 + _W, y1 + _H / 2, y2 + _H / 2
        mid = (x1 + x2) / 2
        dashed = label.endswith("awaited")
        color = AWAITED_COLOR if dashed else "#666"
        style = ' stroke-dasharray="5,4"' if dashed else ""
        marker = "arrow-awaited" if dashed else "arrow"
        out.append(
            f'<path class="edge" d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}" '
            f'fill="none" stroke="{color}"{style} marker-end="url(#{marker})"/>'
        )
        if label:
            out.append(
                f'<text x="{mid:.0f}" y="{(y1 + y2) / 2 - 4:.0f}" font-size="10" fill="{color}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    out += [_node(box, *at[box.id]) for box in boxes]
    out.append("</svg>")
    return "\n".join(out)


def _node(box: _Box, x: float, y: float) -> str:
    fill, border, color = PALETTE.get(box.state, PALETTE["pending"])
    width = 2.5 if box.state == "failed" else 1.2
    dashed = ' stroke-dasharray="4,3"' if box.state == "pending" else ""
    label = box.label if len(box.label) <= _CHARS else box.label[: _CHARS - 1] + "\u2026"
    lines = box.lines if len(box.lines) <= _CHARS + 4 else box.lines[: _CHARS + 3] + "\u2026"
    shape = (
        f'<g class="node {escape(box.state)}" data-key="{escape(box.id)}">'
        f"<title>{escape(box.title)}</title>"
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{_W}" height="{_H}" rx="6" fill="{fill}" stroke="{border}" '
        f'stroke-width="{width}"{dashed}/>'
        f'<text x="{x + 8:.0f}" y="{y + 18:.0f}" font-size="12" font-weight="600" fill="{color}">'
        f"{escape(label)}</text>"
        f'<text x="{x + 8:.0f}" y="{y + 34:.0f}" font-size="10.5" fill="{color}">{escape(lines)}</text></g>'
    )
    if box.href is None:
        return shape
    return f'<a href="{escape(box.href)}">{shape}</a>'
