"""Source hashing: a changed class re-runs with its dependents; where a class's source is found."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .workflows import TASKFILE_TEMPLATE, load_taskfile


def _stats(module: Any, cache_dir: Path, **options: Any) -> tuple[int, dict[str, int]]:
    value, stats = module.Root().run_graph_with_stats(cache_dir=cache_dir, **options)
    return value, {name.rsplit(".", 1)[1]: s.run for name, s in stats.items()}


def test_source_change_reruns_changed_class_and_dependents(tmp_path: Path, cache_dir: Path) -> None:
    # Both versions live at the same path and module name, as an edited file would.
    path = tmp_path / "taskfile.py"
    v1 = load_taskfile(path, TASKFILE_TEMPLATE.format(leaf_op="+ 1", comment="a comment"))
    assert _stats(v1, cache_dir) == (40, {"Leaf": 1, "Root": 1})
    # A comment or formatting change is not a code change.
    v1b = load_taskfile(path, TASKFILE_TEMPLATE.format(leaf_op="+   1", comment="another comment"))
    v1b.Leaf.task_name, v1b.Root.task_name = v1.Leaf.task_name, v1.Root.task_name
    assert _stats(v1b, cache_dir) == (40, {"Leaf": 0, "Root": 0})


def test_code_change_is_detected(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "taskfile.py"
    v1 = load_taskfile(path, TASKFILE_TEMPLATE.format(leaf_op="+ 1", comment=""))
    assert _stats(v1, cache_dir)[0] == 40
    v2 = load_taskfile(path, TASKFILE_TEMPLATE.format(leaf_op="+ 2", comment=""))
    v2.Leaf.task_name, v2.Root.task_name = v1.Leaf.task_name, v1.Root.task_name
    # Turned off by option or environment: the stale code's result is reused.
    assert _stats(v2, cache_dir, detect_source_change=False) == (40, {"Leaf": 0, "Root": 0})
    monkeypatch.setenv("AF_DETECT_SOURCE_CHANGE", "0")
    assert _stats(v2, cache_dir) == (40, {"Leaf": 0, "Root": 0})
    monkeypatch.delenv("AF_DETECT_SOURCE_CHANGE")
    # On (the default): Leaf re-runs, and Root because its upstream changed.
    assert _stats(v2, cache_dir) == (50, {"Leaf": 1, "Root": 1})


NESTED = '''
import typing
from asyncflow import Task

def deco(cls):
    return cls

@deco
class Decorated(Task):
    """Docstrings do not count."""

    async def run_task(self) -> int:
        return 1

class Outer:
    class Inner(Task):
        async def run_task(self) -> int:
            return 2

def factory():
    class Local(Task):
        async def run_task(self) -> int:
            return 3
    return Local

if not typing.TYPE_CHECKING:
    class Guarded(Task):
        async def run_task(self) -> int:
            return 4
'''


def test_class_source_is_found_in_its_file_as_inspect_finds_it(tmp_path: Path) -> None:
    import ast

    from asyncflow import _source

    module = load_taskfile(tmp_path / "nested.py", NESTED)
    for cls in (module.Decorated, module.Outer.Inner, module.factory(), module.Guarded):
        assert _source._class_in_file(cls) is not None, cls.__qualname__
        by_inspect = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        assert _source._normalised_source(cls) == ast.dump(_source._DropDocstrings().visit(by_inspect))
