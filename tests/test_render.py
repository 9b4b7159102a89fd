"""Graphs drawn as Mermaid, DOT and text, grouped by class when large; images via Graphviz."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import anyio
import pytest

from asyncflow._errors import AsyncflowError, GraphvizError
from asyncflow._explain import NodeStatus, explain
from asyncflow._render import render, write_image
from asyncflow.examples.binomial import Choose

from .test_dynamic import FanOut, Square
from .workflows import fan_workflow

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")


async def _mixed(cache_dir: Path) -> list[NodeStatus]:
    """Choose(4, 2) run, then Choose(2, 1) cleared, and Choose(1, 0) marked failed."""
    await Choose(4, 2).run(cache_dir=cache_dir)
    await Choose(2, 1).clear(cache_dir=cache_dir)
    statuses = await explain(Choose(4, 2), cache_dir=cache_dir)
    return [
        dataclasses.replace(s, state="failed", reason="Choose(1, 0) failed: ValueError: boom")
        if repr(s.task) == "Choose(1, 0)"
        else s
        for s in statuses
    ]


async def test_text_marks_each_node(cache_dir: Path) -> None:
    statuses = await _mixed(cache_dir)
    text = render(statuses, "text")
    assert text.splitlines()[0] == f"{len(statuses)} nodes: 3 fresh, 4 stale, 1 failed (deps first)"
    assert "[stale]  Choose(2, 1): no result\n           <- Choose(1, 1), Choose(1, 0)\n" in text
    assert "[stale]  Choose(3, 1): upstream Choose(2, 1) is stale\n" in text
    assert "[fresh]  Choose(1, 1)\n" in text
    assert "[FAILED] Choose(1, 0): Choose(1, 0) failed: ValueError: boom\n" in text
    assert text.rstrip().splitlines()[-2].endswith("Choose(4, 2): upstream Choose(3, 2) is stale")


async def test_mermaid_colors_and_reasons(cache_dir: Path) -> None:
    statuses = await _mixed(cache_dir)
    text = render(statuses, "mermaid")
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    assert {"fresh", "stale", "failed"} <= set(re.findall(r"classDef (\w+) fill", text))
    ids = {
        re.search(r'"([^"<]*)', line).group(1): line.split("[")[0].strip() for line in lines if '["' in line
    }  # type: ignore[union-attr]
    assert len(ids) == len(statuses)
    node = next(line for line in lines if line.strip().startswith(ids["Choose(2, 1)"] + "["))
    assert node.endswith(":::stale")
    assert "stale: no result" in node
    assert f"    {ids['Choose(1, 1)']} --> {ids['Choose(2, 1)']}" in lines
    edges = [line for line in lines if "-->" in line]
    assert len(edges) == sum(len(s.deps) for s in statuses)


async def test_dot_colors_and_tooltips(cache_dir: Path) -> None:
    statuses = await _mixed(cache_dir)
    text = render(statuses, "dot")
    assert text.startswith("digraph asyncflow {")
    assert text.rstrip().endswith("}")
    assert text.count(" -> ") == sum(len(s.deps) for s in statuses)
    stale = next(line for line in text.splitlines() if 'label="Choose(2, 1)' in line)
    assert 'label="Choose(2, 1)\\nno result"' in stale
    assert "dashed" in stale
    assert "#fff3cd" in stale
    failed = next(line for line in text.splitlines() if 'label="Choose(1, 0)' in line)
    assert "bold" in failed
    assert "#f8d7da" in failed
    assert "tooltip=" in failed


async def test_small_graph_not_grouped_unless_asked(cache_dir: Path) -> None:
    statuses = await _mixed(cache_dir)
    grouped = render(statuses, "text", group_over=3)
    assert grouped.splitlines()[1] == (
        "[FAILED] asyncflow.examples.binomial.Choose: 8 nodes: 3 fresh, 4 stale, 1 failed"
    )
    assert "upstream is stale: 3" in grouped  # reasons naming a node are counted together
    dot = render(statuses, "dot", group_over=3)
    assert dot.count(" -> ") == 1
    assert 'c0 -> c0 [label="8"];' in dot


async def test_ten_thousand_nodes_grouped_by_class(cache_dir: Path) -> None:
    statuses = await explain(fan_workflow(5000, 0.0), cache_dir=cache_dir)
    assert len(statuses) == 15001
    for fmt in ("mermaid", "dot", "text"):
        text = render(statuses, fmt)
        assert len(text.splitlines()) < 30, fmt
    dot = render(statuses, "dot")
    assert (
        "tests.workflows.Sleeper\\n10000 nodes: 0 fresh, 10000 stale, 0 failed\\ne.g. no result (x10000)"
        in dot
    )
    assert 'c0 -> c1 [label="10000"];' in dot
    assert 'c1 -> c2 [label="5000"];' in dot
    mermaid = render(statuses, "mermaid")
    assert 'c0 -->|"10000"| c1' in mermaid
    assert ":::stale" in mermaid
    text = render(statuses, "text")
    assert "<- tests.workflows.Pair (5000 edges)" in text


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="mermaid, dot, text"):
        render([], "svg")  # type: ignore[arg-type]


@needs_dot
async def test_dot_output_parses_with_graphviz(cache_dir: Path, tmp_path: Path) -> None:
    statuses = await _mixed(cache_dir)
    for group_over in (50, 3):
        source = render(statuses, "dot", group_over=group_over)
        done = await anyio.run_process(["dot", "-Tplain"], input=source.encode(), check=False)
        assert done.returncode == 0, done.stderr.decode()
    write_image(render(statuses, "dot"), tmp_path / "graph.svg")
    svg = (tmp_path / "graph.svg").read_text()
    assert svg.lstrip().startswith("<?xml")
    assert "Choose(2, 1)" in svg
    write_image(render(statuses, "dot"), tmp_path / "graph.png")
    assert (tmp_path / "graph.png").read_bytes().startswith(b"\x89PNG")


@needs_dot
def test_graphviz_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(GraphvizError, match="dot failed") as info:
        write_image("digraph {", tmp_path / "bad.svg")
    assert info.value.reason == "failed"


def test_missing_graphviz_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AsyncflowError, match=r"^Graphviz is not installed: apt-get install graphviz") as info:
        write_image("digraph {}", tmp_path / "graph.svg")
    assert isinstance(info.value, GraphvizError)
    assert info.value.reason == "missing"
    assert "--format dot" in str(info.value)


def test_image_suffix_is_checked(tmp_path: Path) -> None:
    with pytest.raises(GraphvizError, match=r"must end in \.svg, \.png, \.pdf") as info:
        write_image("digraph {}", tmp_path / "graph.txt")
    assert info.value.reason == "format"


@pytest.mark.parametrize("group_over", [50, 2])
async def test_awaited_tasks_are_drawn_as_dashed_edges(cache_dir: Path, group_over: int) -> None:
    await FanOut(3).run(cache_dir=cache_dir)
    await Square(1).clear(cache_dir=cache_dir)
    statuses = await explain(FanOut(3), cache_dir=cache_dir)
    mermaid = render(statuses, "mermaid", group_over=group_over)
    dot = render(statuses, "dot", group_over=group_over)
    text = render(statuses, "text", group_over=group_over)
    if group_over == 50:
        assert mermaid.count("-.->|awaited|") == 3
        assert dot.count("style=dashed") == 3
        assert "<~ Square(0), Square(1), Square(2)\n" in text
        assert "[stale]  FanOut(3): dynamic dependency Square(1) is stale\n" in text
    else:  # one box per class: the three awaited edges are one dashed class edge
        assert '-.->|"3 awaited"|' in mermaid
        assert '[label="3 awaited", style=dashed' in dot
        assert f"<~ {Square.task_name} (3 edges)" in text
        assert "dynamic dependency changed: 1" in text
