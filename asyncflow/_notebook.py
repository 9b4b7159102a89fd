"""A live display in a Jupyter cell's output: shown once, then updated in place from a thread.

`_progress` uses it when a run happens in an IPython kernel. It needs no ipywidgets (rich's
`Live` does in a notebook): it sends one ``display_data`` message with a display id, then
``update_display_data`` messages with the same id, which every Jupyter front end (and
nbclient) applies to the output already shown. IPython is never imported here: a kernel
has imported it already, and a process that has not is no kernel. No rendering here: the
caller gives a function returning the MIME bundle to show.
"""

from __future__ import annotations

import contextvars
import importlib
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

Bundle = dict[str, str]  # MIME type -> content, e.g. {"text/plain": ..., "text/html": ...}


def in_kernel() -> bool:
    """Tell whether this process is an IPython kernel (behind any Jupyter front end), cheaply."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    # A kernel's shell (ZMQInteractiveShell) has its kernel; the terminal IPython's has not.
    return getattr(shell, "kernel", None) is not None


class CellDisplay:
    """One output of the running cell, redrawn every `interval` seconds while it changes.

    `render` is called on the refresh thread, so it must only read what it shows (the
    counts it reads may be a moment old). `stop` shows `render`'s last bundle and joins
    the thread.
    """

    def __init__(self, render: Callable[[], Bundle], *, interval: float = 0.25) -> None:
        self._render = render
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None  # IPython.display.DisplayHandle: IPython is not a dependency
        self._shown: Bundle = {}

    def start(self) -> None:
        """Show the first bundle in the cell's output and start refreshing it."""
        # Through importlib: IPython is no dependency of asyncflow, and a kernel has it.
        display = importlib.import_module("IPython.display").display
        self._shown = self._render()
        self._handle = display(self._shown, raw=True, display_id=True)
        # The kernel finds the cell to update through context variables (its parent
        # header): the thread runs in a copy of this context, the running cell's.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._refresh,), name="asyncflow-progress", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing, then show the last bundle."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._show(self._render())

    def _refresh(self) -> None:
        while not self._stopping.wait(self._interval):
            self._show(self._render())

    def _show(self, bundle: Bundle) -> None:
        if bundle != self._shown and self._handle is not None:
            self._handle.update(bundle, raw=True)
            self._shown = bundle
