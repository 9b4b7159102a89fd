"""The `Runner` protocol every place-to-run implements, and what a runner hands back.

A runner gets a task whose requirements are already resolved (reading them gives
values) and returns the result together with its pickle, which the cache stores. The
scheduler never asks which runner it holds; `choose.py` picks one per task class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._task import Task


@dataclass(frozen=True, slots=True)
class Outcome:
    """A body's result, and the same pickled for the cache."""

    value: Any
    pickled: bytes


class Runner(Protocol):
    """Runs one task body somewhere and hands back its outcome."""

    async def run(self, task: Task[Any, Any]) -> Outcome:
        """Run ``task.run_task()`` to completion; raise what it raised.

        Cancelling the caller must stop the body (or abandon it, for threads).
        """
        ...


@runtime_checkable
class Closing(Protocol):
    """A runner that holds something for the whole run (SSH connections) and lets go at its end."""

    async def aclose(self) -> None:
        """Release what the runner holds; called once, when the run ends."""
        ...
