"""Whether a run starts from a script's top level, outside ``if __name__ == "__main__":``.

A process pool started by spawn or forkserver (and anyio's worker processes) imports
the parent's script in each worker, as ``__mp_main__``: a script that starts its
workflow at its top level starts it again there, in every worker. Found by looking up
this thread's stack for the script's top-level frame; no I/O unless that frame is there.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from ._errors import AsyncflowError

GUARD = 'if __name__ == "__main__":'


def top_level_call(module_name: str) -> tuple[str, int] | None:
    """Return the file and current line of `module_name`'s top-level code, if on this stack."""
    frame = sys._getframe(1)  # pyright: ignore[reportPrivateUsage]  # the stack, no copies
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == module_name:
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None


def refuse_reimported_script() -> None:
    """Refuse to start a run from a script that a worker process is importing.

    Raises:
        AsyncflowError: called from the top level of ``__mp_main__``: a worker of a
            process pool runs the parent's script again, which lacks the guard.
    """
    found = top_level_call("__mp_main__")
    if found is None:
        return
    path, line = found
    raise AsyncflowError(
        f"{path}, line {line}, starts a workflow while a worker process imports the script: "
        f"put the call under `{GUARD}`\n"
        "  a worker started by spawn or forkserver imports the parent's script as __mp_main__, "
        "so a run at the script's top level would start again in every worker"
    )


def unguarded_main_call() -> tuple[str, int] | None:
    """Return where ``__main__`` starts this run at its top level outside the guard, if it does."""
    found = top_level_call("__main__")
    if found is None:
        return None
    path, line = found
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), path)
    except (OSError, SyntaxError, ValueError):  # not a file (python -c, a notebook)
        return None
    for node in tree.body:
        if (
            isinstance(node, ast.If)
            and _is_guard(node.test)
            and node.lineno <= line <= (node.end_lineno or 0)
        ):
            return None
    return found


def _is_guard(test: ast.expr) -> bool:
    """Tell whether `test` is ``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    return {ast.unparse(test.left), ast.unparse(test.comparators[0])} == {"__name__", "'__main__'"}
