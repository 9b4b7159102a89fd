"""The package's modules import in layers, bottom up, and never in a cycle.

Read from the source, so it covers imports inside functions too (a deferred import does
not hide a cycle); imports under ``if TYPE_CHECKING:`` are free. The layers are those of
the README's map of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "asyncflow"

# Bottom up: a module may import from its own layer (without a cycle) and the ones below.
LAYERS: list[set[str]] = [
    {
        "_errors",
        "_atomic",
        "_hashing",
        "_keys",
        "_file",
        "_stats",
        "_tally",
        "_limits",
        "_progress",
        "_notebook",
        "_sync",
        "_mainguard",
        "_capture",
        "_collector",
    },
    {"_placements", "_options"},
    {"_requires", "_source", "_recipes"},
    {"_graph", "_plan"},
    {"_cache"},
    {"_runners"},
    {"_scheduler"},
    {"_task"},
    {"_explain", "_render", "web"},
    {"_taskfile", "_cli", "__main__", "worker", "__init__", "examples"},
]


def _module_name(path: Path) -> str:
    parts = ["asyncflow", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, path: Path) -> set[str]:
    """Return the asyncflow modules `module` imports at run time (deferred ones included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("asyncflow"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            if base.startswith("asyncflow"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    out.discard(module)
    return out


IMPORTS = {module: _imported(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README's map)")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    upward = sorted(m for m in IMPORTS[module] if m in MODULES and _layer(m) > _layer(module))
    assert upward == [], f"{module} imports from layers above it: {upward}"


def test_no_import_cycle() -> None:
    # Depth-first search; a module met again while on the path closes a cycle.
    done: set[str] = set()
    path: list[str] = []

    def walk(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        path.append(module)
        for imported in sorted(IMPORTS.get(module, ())):
            walk(imported)
        path.pop()
        done.add(module)

    for module in sorted(MODULES):
        walk(module)


def test_the_index_is_private_to_the_cache() -> None:
    # The rest of asyncflow reaches the cache through session.py (a run) and store.py.
    outside = sorted(
        m
        for m, imported in IMPORTS.items()
        if "asyncflow._cache.index" in imported and not m.startswith("asyncflow._cache")
    )
    assert outside == []


def test_the_checker_sees_deferred_imports() -> None:
    # _task imports the scheduler inside __af_run__, only when a run starts.
    assert "asyncflow._scheduler" in IMPORTS["asyncflow._task"]
    # _explain imports _task only under TYPE_CHECKING: such imports are free.
    assert "asyncflow._task" not in IMPORTS["asyncflow._explain"]
    assert "from ._task import Task" in MODULES["asyncflow._explain"].read_text()
