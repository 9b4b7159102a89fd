"""The README's ``python`` snippets run, in order, as one notebook-like session would.

Blocks fenced as ``py`` are illustrations that need a cluster or a host; they are not run.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import types
from pathlib import Path

import anyio
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^( *)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def snippets() -> list[str]:
    return [textwrap.dedent(m.group(2)) for m in FENCE.finditer(README.read_text())]


def test_readme_has_the_snippets() -> None:
    assert len(snippets()) >= 6


async def test_readme_snippets_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets use the default ./.cache
    monkeypatch.delenv("AF_CACHE_DIR")
    # A blocking twin refuses to run inside the test's event loop (as documented):
    # call it from a worker thread, as a script without a loop would.
    source = "import anyio\n" + "\n".join(snippets())
    source = re.sub(
        r"^(\w[\w, ]*) = (.*\.run_graph\(\))",
        r"\1 = await anyio.to_thread.run_sync(lambda: \2)",
        source,
        flags=re.M,
    )
    path = tmp_path / "readme_snippets.py"
    path.write_text(source)  # a real file, so source hashing can read the classes
    module = types.ModuleType("readme_snippets")
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, "readme_snippets", module)
    code = compile(source, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, module.__dict__)
    if result is not None:
        await result
    out = capsys.readouterr().out
    assert "'mean': 0.2" in out
    assert "6 3\n6 0\nran again: 2\n" in out
    assert "Fragile(0) failed: ZeroDivisionError: division by zero" in out
    assert "['Fragile(0)']" in out
    assert module.ans == 20
    assert await anyio.Path(module.path).read_bytes() == b"weights"
