"""A graph's node statuses drawn as Mermaid, Graphviz DOT or plain text.

`render` is pure (no I/O here): it turns the `NodeStatus` list of `explain` into source
text, each node marked fresh, stale or failed with the reason it is stale. The tasks a
body awaited in its last run (dynamic dependencies) are drawn as dashed edges. A graph of
more than `group_over` nodes is drawn one box per task class with counts, so a graph of
10,000 nodes stays readable. `write_image` is the one function that runs a program:
Graphviz's ``dot``, to turn DOT source into an SVG or PNG file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ._errors import GraphvizError

if TYPE_CHECKING:
    from pathlib import Path

    from ._explain import NodeStatus, State

Format = Literal["mermaid", "dot", "text"]
FORMATS: tuple[Format, ...] = ("mermaid", "dot", "text")
IMAGE_FORMATS = ("svg", "png", "pdf")

# (fill, border, text) per state: green, amber, red; failed nodes also get a bold border.
COLORS: dict[State, tuple[str, str, str]] = {
    "fresh": ("#d4edda", "#2e7d32", "#1b4d20"),
    "stale": ("#fff3cd", "#b8860b", "#5c4300"),
    "failed": ("#f8d7da", "#c62828", "#6d1212"),
}
_STATES: tuple[State, ...] = ("fresh", "stale", "failed")


@dataclass
class _Group:
    """The nodes of one task class, counted by state."""

    name: str
    counts: Counter[str] = field(default_factory=Counter[str])
    reasons: Counter[str] = field(default_factory=Counter[str])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def state(self) -> State:
        """The worst state of its nodes: failed, else stale, else fresh."""
        if self.counts["failed"]:
            return "failed"
        return "stale" if self.counts["stale"] else "fresh"

    def summary(self) -> str:
        n = self.total
        counts = ", ".join(f"{self.counts[s]} {s}" for s in _STATES)
        return f"{n} node{'s' if n != 1 else ''}: {counts}"

    def top_reason(self) -> str:
        if not self.reasons:
            return ""
        reason, n = self.reasons.most_common(1)[0]
        return f"{reason} (x{n})" if n > 1 else reason


def render(statuses: list[NodeStatus], fmt: Format, *, group_over: int = 50) -> str:
    """Draw the graph of `statuses` (deps first, as `explain` returns them) as text.

    Args:
        statuses: every node of the graph, from `explain`.
        fmt: ``"mermaid"`` (a flowchart), ``"dot"`` (Graphviz) or ``"text"``.
        group_over: with more nodes than this, draw one box per task class with counts
            (and edges between classes with the number of node edges they stand for).

    Returns:
        The source text, ending with a newline.

    Raises:
        ValueError: `fmt` is not one of the formats.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown graph format {fmt!r}; use one of {', '.join(FORMATS)}")
    if len(statuses) > group_over:
        groups, edges = _group(statuses)
        if fmt == "mermaid":
            return _grouped_mermaid(groups, edges)
        if fmt == "dot":
            return _grouped_dot(groups, edges)
        return _grouped_text(statuses, groups, edges)
    if fmt == "mermaid":
        return _mermaid(statuses)
    if fmt == "dot":
        return _dot(statuses)
    return _text(statuses)


def _counts_line(statuses: list[NodeStatus]) -> str:
    counts = Counter(s.state for s in statuses)
    n = len(statuses)
    return f"{n} node{'s' if n != 1 else ''}: " + ", ".join(f"{counts[s]} {s}" for s in _STATES)


# An edge between two classes: (upstream class, downstream class, whether the downstream awaited it).
_Edge = tuple[str, str, bool]


def _group(statuses: list[NodeStatus]) -> tuple[dict[str, _Group], Counter[_Edge]]:
    """Count the nodes of each class, and the node edges between each pair of classes."""
    groups: dict[str, _Group] = {}
    class_of: dict[str, str] = {}
    edges: Counter[_Edge] = Counter()
    for status in statuses:
        group = groups.get(status.task_name)
        if group is None:
            group = groups[status.task_name] = _Group(status.task_name)
        group.counts[status.state] += 1
        if status.reason:
            group.reasons[_reason_kind(status.reason)] += 1
        class_of[status.key] = status.task_name
        for dep in status.deps:
            edges[class_of[dep], status.task_name, False] += 1
        for child in status.awaited:
            edges[class_of[child], status.task_name, True] += 1
    return groups, edges


def _reason_kind(reason: str) -> str:
    """Fold reasons naming a node into one kind, so a class's reasons can be counted."""
    if reason.startswith("upstream ") and reason.endswith(" is stale"):
        return "upstream is stale"
    if reason.startswith("upstream ") and reason.endswith(" changed"):
        return "upstream changed"
    if reason.startswith("dynamic dependency ") and reason.endswith((" changed", " is stale")):
        return "dynamic dependency changed"
    return reason


# Mermaid


def _mermaid_text(text: str) -> str:
    """Escape text for a quoted Mermaid label (entity codes, no HTML)."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


def _mermaid_header() -> list[str]:
    lines = ["flowchart TD"]
    for state in _STATES:
        fill, border, color = COLORS[state]
        width = "3px" if state == "failed" else "1px"
        dash = ",stroke-dasharray:5 3" if state == "stale" else ""
        lines.append(
            f"    classDef {state} fill:{fill},stroke:{border},color:{color},stroke-width:{width}{dash}"
        )
    return lines


def _mermaid(statuses: list[NodeStatus]) -> str:
    lines = _mermaid_header()
    ids = {s.key: f"n{i}" for i, s in enumerate(statuses)}
    for status in statuses:
        label = _mermaid_text(repr(status.task))
        if status.reason:
            label += "<br/><small>" + _mermaid_text(f"{status.state}: {status.reason}") + "</small>"
        lines.append(f'    {ids[status.key]}["{label}"]:::{status.state}')
    lines.extend(f"    {ids[dep]} --> {ids[s.key]}" for s in statuses for dep in s.deps)
    lines.extend(f"    {ids[child]} -.->|awaited| {ids[s.key]}" for s in statuses for child in s.awaited)
    return "\n".join(lines) + "\n"


def _grouped_mermaid(groups: dict[str, _Group], edges: Counter[_Edge]) -> str:
    lines = _mermaid_header()
    ids = {name: f"c{i}" for i, name in enumerate(groups)}
    for name, group in groups.items():
        label = f"<b>{_mermaid_text(name)}</b><br/>{_mermaid_text(group.summary())}"
        reason = group.top_reason()
        if reason:
            label += "<br/><small>" + _mermaid_text(f"e.g. {reason}") + "</small>"
        lines.append(f'    {ids[name]}["{label}"]:::{group.state}')
    for (a, b, awaited), n in edges.items():
        lines.append(
            f'    {ids[a]} -.->|"{n} awaited"| {ids[b]}' if awaited else f'    {ids[a]} -->|"{n}"| {ids[b]}'
        )
    return "\n".join(lines) + "\n"


# Graphviz DOT


def _dot_text(text: str) -> str:
    """Quote text as a DOT string (backslashes, quotes and newlines escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_header() -> list[str]:
    return [
        "digraph asyncflow {",
        "    rankdir=BT;",
        '    node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '    edge [color="#666666", arrowsize=0.7, fontname="Helvetica", fontsize=10];',
    ]


def _dot_node(node_id: str, label: str, state: State, tooltip: str) -> str:
    fill, border, color = COLORS[state]
    style = {"fresh": "rounded,filled", "stale": "rounded,filled,dashed", "failed": "rounded,filled,bold"}[
        state
    ]
    return (
        f"    {node_id} [label={_dot_text(label)}, tooltip={_dot_text(tooltip)}, style={_dot_text(style)}, "
        f'fillcolor="{fill}", color="{border}", fontcolor="{color}"];'
    )


AWAITED_COLOR = "#1f5fbf"
_AWAITED = f'[style=dashed, color="{AWAITED_COLOR}", tooltip="awaited by its body"]'


def _dot(statuses: list[NodeStatus]) -> str:
    lines = _dot_header()
    ids = {s.key: f"n{i}" for i, s in enumerate(statuses)}
    for status in statuses:
        label = repr(status.task)
        tooltip = f"{label}: {status.state}"
        if status.reason:
            label += f"\n{status.reason}"
            tooltip += f" ({status.reason})"
        lines.append(_dot_node(ids[status.key], label, status.state, tooltip))
    lines.extend(f"    {ids[dep]} -> {ids[s.key]};" for s in statuses for dep in s.deps)
    lines.extend(f"    {ids[child]} -> {ids[s.key]} {_AWAITED};" for s in statuses for child in s.awaited)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _grouped_dot(groups: dict[str, _Group], edges: Counter[_Edge]) -> str:
    lines = _dot_header()
    ids = {name: f"c{i}" for i, name in enumerate(groups)}
    for name, group in groups.items():
        label = f"{name}\n{group.summary()}"
        reason = group.top_reason()
        if reason:
            label += f"\ne.g. {reason}"
        reasons = "; ".join(f"{r} (x{n})" for r, n in group.reasons.most_common(5))
        tooltip = f"{name}: {group.summary()}" + (f"; {reasons}" if reasons else "")
        lines.append(_dot_node(ids[name], label, group.state, tooltip))
    for (a, b, awaited), n in edges.items():
        if awaited:
            lines.append(
                f'    {ids[a]} -> {ids[b]} [label="{n} awaited", style=dashed, color="{AWAITED_COLOR}"];'
            )
        else:
            lines.append(f'    {ids[a]} -> {ids[b]} [label="{n}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


# Plain text

_MARKERS: dict[State, str] = {"fresh": "[fresh] ", "stale": "[stale] ", "failed": "[FAILED]"}


def _text(statuses: list[NodeStatus]) -> str:
    names = {s.key: repr(s.task) for s in statuses}
    legend = "deps first; <~ awaited in its last run" if any(s.awaited for s in statuses) else "deps first"
    lines = [f"{_counts_line(statuses)} ({legend})"]
    for status in statuses:
        line = f"{_MARKERS[status.state]} {names[status.key]}"
        if status.reason:
            line += f": {status.reason}"
        lines.append(line)
        if status.deps:
            lines.append("           <- " + ", ".join(names[d] for d in status.deps))
        if status.awaited:
            lines.append("           <~ " + ", ".join(names[c] for c in status.awaited))
    return "\n".join(lines) + "\n"


def _grouped_text(statuses: list[NodeStatus], groups: dict[str, _Group], edges: Counter[_Edge]) -> str:
    lines = [f"{_counts_line(statuses)}, in {len(groups)} task classes (grouped by class)"]
    for name, group in groups.items():
        lines.append(f"{_MARKERS[group.state]} {name}: {group.summary()}")
        lines.extend(f"           {reason}: {n}" for reason, n in group.reasons.most_common(5))
        for awaited, arrow in ((False, "<-"), (True, "<~")):
            upstream = [(a, n) for (a, b, dynamic), n in edges.items() if b == name and dynamic == awaited]
            if upstream:
                lines.append(f"           {arrow} " + ", ".join(f"{a} ({n} edges)" for a, n in upstream))
    return "\n".join(lines) + "\n"


def write_image(dot_source: str, path: Path) -> None:
    """Render `dot_source` with Graphviz into `path` (``.svg``, ``.png`` or ``.pdf``).

    Raises:
        GraphvizError: the suffix is not an image format, Graphviz is not installed
            (``reason="missing"``), or ``dot`` refused the source (``reason="failed"``).
    """
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise GraphvizError(
            f"cannot write a graph image to {str(path)!r}: the file name must end in "
            f"{', '.join('.' + f for f in IMAGE_FORMATS)}",
            reason="format",
        )
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizError(
            "Graphviz is not installed: apt-get install graphviz (or brew install graphviz), "
            "or use --format dot and render it elsewhere",
            reason="missing",
        )
    try:
        done = subprocess.run(
            [dot, f"-T{suffix}", "-o", str(path)], input=dot_source.encode(), capture_output=True, check=False
        )
    except OSError as exc:
        raise GraphvizError(f"Graphviz's dot ({dot}) could not be started: {exc}", reason="failed") from exc
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise GraphvizError(
            f"Graphviz's dot failed (exit status {done.returncode}) writing {str(path)!r}\n{stderr}",
            reason="failed",
        )
