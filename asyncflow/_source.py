"""Hash a task class's source as a normalised AST, so edits that change code re-run it.

Comments, blank lines, indentation and docstrings do not count; everything else does.
The class and each user-defined task base class it inherits from are hashed together;
asyncflow's own (`Task`, `SourceTask`, `SinkTask`) are not.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import sys
import textwrap
import threading
import weakref

from ._errors import TaskDefinitionError

_HASHES: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
# CPython 3.11's parser is not safe to run in two threads at once ("SystemError: AST
# constructor recursion depth mismatch", gh-106905), and concurrent runs hash sources in
# worker threads: one at a time.
_PARSING = threading.Lock()


class _DropDocstrings(ast.NodeTransformer):
    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return node

    visit_ClassDef = _strip
    visit_FunctionDef = _strip
    visit_AsyncFunctionDef = _strip


def _source_from_methods(cls: type) -> str | None:
    """Find a class's source through its methods' code, for classes of a notebook cell.

    inspect.getsource looks a class up through its module's file, which ``__main__`` of a
    Jupyter kernel lacks; the methods' code objects still name the cell, whose text
    IPython keeps in `linecache`.
    """
    for value in vars(cls).values():
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        if code is None:
            continue
        lines = linecache.getlines(code.co_filename)
        if not lines:
            continue
        for node in ast.walk(ast.parse("".join(lines))):
            if (
                isinstance(node, ast.ClassDef)
                and node.name == cls.__name__
                and node.end_lineno is not None
                and node.lineno <= code.co_firstlineno <= node.end_lineno
            ):
                return "".join(lines[node.lineno - 1 : node.end_lineno])
    return None


# The parsed source of the files task classes live in: file name -> (its lines, as
# linecache holds them, and their tree, docstrings dropped). A class is found in its
# file's tree, so that a file is parsed once however many classes it defines
# (inspect.getsource would parse it per class, then tokenize it; compiling the
# tokenizer's patterns alone takes ~20 ms).
_TREES: dict[str, tuple[list[str], ast.Module]] = {}


def _class_in_file(cls: type) -> ast.ClassDef | None:
    """Return the definition of `cls` from its module's file (docstrings dropped), or None."""
    module = sys.modules.get(cls.__module__)
    try:
        file = inspect.getsourcefile(cls)
    except (OSError, TypeError):  # no file: a notebook cell, exec'd code
        return None
    if not file or module is None:
        return None
    linecache.checkcache(file)  # the file may have changed since it was read
    lines = linecache.getlines(file, module.__dict__)
    if not lines:
        return None
    cached = _TREES.get(file)
    if cached is None or cached[0] is not lines:
        tree = _DropDocstrings().visit(ast.parse("".join(lines)))
        cached = _TREES[file] = (lines, tree)
    return _find_class(cached[1], cls.__qualname__.split("."))


def _find_class(tree: ast.AST, path: list[str]) -> ast.ClassDef | None:
    """Follow a qualified name (``Outer.Inner``, ``f.<locals>.Local``) down a tree."""
    name, rest = path[0], path[1:]
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            if not rest:
                return node if isinstance(node, ast.ClassDef) else None
            if isinstance(node, ast.ClassDef):
                found = _find_class(node, rest)
            elif rest[0] == "<locals>" and len(rest) > 1:
                found = _find_class(node, rest[1:])
            else:
                found = None
            if found is not None:
                return found
        elif not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found = _find_class(node, path)  # e.g. a class inside `if TYPE_CHECKING:`
            if found is not None:
                return found
    return None


def _normalised_source(cls: type) -> str:
    node = _class_in_file(cls)
    if node is not None:
        return ast.dump(ast.Module(body=[node], type_ignores=[]))
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError) as exc:
        found = _source_from_methods(cls)
        if found is None:
            raise TaskDefinitionError(
                f"{cls.__qualname__}: cannot read the source of the class (defined in "
                f"{cls.__module__!r}) to detect code changes; define it in a file or a "
                f"notebook cell, or run with detect_source_change=False (asyncflow run --no-detect-source-change)"
            ) from exc
        source = found
    tree = _DropDocstrings().visit(ast.parse(textwrap.dedent(source)))
    return ast.dump(tree)


def source_hash(cls: type) -> str:
    """Return the hex digest of task class `cls`'s normalised source and of its user task bases.

    Raises:
        TaskDefinitionError: the source of a class cannot be read.
    """
    cached = _HASHES.get(cls)
    if cached is not None:
        return cached
    with _PARSING:
        return _hash_class(cls)


_OWN_MODULE = "asyncflow._task"  # where asyncflow's own task classes are defined


def _hash_class(cls: type) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for klass in cls.__mro__:
        # A task class has options of its own (Task.__init_subclass__ sets them on each).
        if "__af_options__" in vars(klass) and klass.__module__ != _OWN_MODULE:
            digest.update(_normalised_source(klass).encode())
    value = digest.hexdigest()
    _HASHES[cls] = value
    return value
