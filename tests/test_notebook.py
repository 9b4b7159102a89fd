"""examples/notebook.ipynb, executed by nbclient on a real ipykernel.

The notebook defines tasks in cells, runs them with top-level `await`, re-runs them
(everything cached), then redefines `Leaf` (an edit) and runs again: `Leaf` re-runs,
`Load` (upstream) is reused, `Total` (downstream) re-runs on the new values.
"""

from __future__ import annotations

import re
from pathlib import Path

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
