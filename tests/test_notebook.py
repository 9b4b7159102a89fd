"""examples/notebook.ipynb, executed by nbclient on a real ipykernel.

The notebook defines tasks in cells, runs them with top-level `await`, re-runs them
(everything cached), then redefines `Leaf` (an edit) and runs again: `Leaf` re-runs,
`Load` (upstream) is reused, `Total` (downstream) re-runs on the new values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ipykernel  # noqa: F401 - the kernel nbclient starts must be installed
import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def _execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run the notebook in a fresh python3 kernel; return its printed lines."""
    monkeypatch.setenv("ASYNCFLOW_NOTEBOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    lines: list[str] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                lines.extend(output["text"].splitlines())
    return lines


def _facts(lines: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """{(label, class): (run, reused)} from lines like ``first: Leaf run=4 reused=0``."""
    facts = {}
    for line in lines:
        match = re.fullmatch(r"(\w+): (\w+) run=(\d+) reused=(\d+)", line)
        if match:
            facts[match[1], match[2]] = (int(match[3]), int(match[4]))
    return facts


def _check(lines: list[str], cache_dir: Path) -> None:
    facts = _facts(lines)
    assert "first: value=20" in lines
    assert facts["first", "Load"] == (4, 0)
    assert facts["first", "Leaf"] == (4, 0)
    assert facts["first", "Total"] == (1, 0)
    # unchanged: everything from the cache
    assert "again: value=20" in lines
    assert facts["again", "Load"] == (0, 4)
    assert facts["again", "Leaf"] == (0, 4)
    assert facts["again", "Total"] == (0, 1)
    # Leaf edited: the Leaf nodes re-run, Load is reused, Total re-runs on the new values
    assert "edited: value=100" in lines
    assert facts["edited", "Load"] == (0, 4)
    assert facts["edited", "Leaf"] == (4, 0)
    assert facts["edited", "Total"] == (1, 0)
    assert (cache_dir / "cache" / "asyncflow" / "index.sqlite").exists()


def test_notebook_is_valid_nbformat_v4() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # stored clean


@pytest.mark.slow
def test_notebook_runs_and_reruns_the_edited_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _check(_execute(tmp_path, monkeypatch), tmp_path)


_PROGRESS_CELLS = [
    """\
import anyio
from asyncflow import RequiresList, Task

class Step(Task, channel="step"):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        await anyio.sleep(0.4)
        return self.i

class Steps(Task):
    steps: RequiresList[int]

    def build_task(self, n: int) -> None:
        self.steps = [Step(i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.steps)
""",
    # one step at a time: 1.2 s, several refreshes
    'print("first", await Steps(3).run(cache_dir=CACHE, rate_limits={"step": 1}, progress=True))',
    'print("again", await Steps(3).run(cache_dir=CACHE, progress=True))',
]


class _Recording(nbclient.NotebookClient):
    """The real client, keeping every message the kernel sent about a cell, in order."""

    def __init__(self, nb: nbformat.NotebookNode, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.messages: list[tuple[int, dict[str, Any]]] = []  # (cell index, message)

    def process_message(self, msg: dict[str, Any], cell: nbformat.NotebookNode, cell_index: int) -> Any:
        self.messages.append((cell_index, msg))
        return super().process_message(msg, cell, cell_index)


def _displays(messages: list[tuple[int, dict[str, Any]]], cell: int) -> list[tuple[str, str, str]]:
    """(message type, display id, plain text) of a cell's displays and their updates, in order."""
    return [
        (msg["msg_type"], msg["content"]["transient"]["display_id"], msg["content"]["data"]["text/plain"])
        for index, msg in messages
        if index == cell
        and msg["msg_type"] in ("display_data", "update_display_data")
        and (msg["content"].get("transient") or {}).get("display_id")
    ]


@pytest.mark.slow
def test_progress_is_a_live_display_in_the_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"CACHE = {str(tmp_path)!r}\n" + _PROGRESS_CELLS[0])]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in _PROGRESS_CELLS[1:]]
    client = _Recording(
        nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    # Shown once, then updated in place while the bodies ran, then at the end.
    shown = _displays(client.messages, 1)
    assert [kind for kind, _, _ in shown[:1]] == ["display_data"], shown
    assert {display_id for _, display_id, _ in shown} == {shown[0][1]}
    updates = [text for kind, _, text in shown if kind == "update_display_data"]
    assert len(updates) >= 2, shown
    assert any(re.search(r"Step +[12]/3 ", text) for text in updates[:-1]), shown  # mid-run
    assert "run ended" not in updates[-2]
    final = updates[-1]
    assert re.search(r"Step +3/3 +queued 0 +running 0 +cached 0 +failed 0 +0:00:0\d", final), final
    assert re.search(r"Steps +1/1 +queued 0 +running 0 +cached 0 +failed 0", final), final
    assert "4/4 done (4 run, 0 cached, 0 failed, 0 not run) in 2 task class(es)" in final
    # The executed notebook keeps the last drawing where the display was shown, before the result.
    outputs = nb.cells[1].outputs
    assert [o.output_type for o in outputs] == ["display_data", "stream"], outputs
    assert outputs[0].data["text/plain"] == final
    assert "<table>" in outputs[0].data["text/html"]
    assert outputs[1].text == "first 3\n"

    # Run again: all from the cache, and the display says so.
    again = nb.cells[2].outputs
    drawn = again[0].data["text/plain"]
    assert re.search(r"Step +3/3 +queued 0 +running 0 +cached 3 +failed 0", drawn), drawn
    assert again[1].text == "again 3\n"
