"""Running a body where a runner runs it: telling an ``async def`` body without importing inspect."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

import pytest

from asyncflow._runners.base import _is_async  # pyright: ignore[reportPrivateUsage]  # what is tested


class Bodies:
    async def coroutine(self) -> None:
        pass

    def plain(self) -> None:
        pass

    partial_coroutine = functools.partialmethod(coroutine)
    partial_plain = functools.partialmethod(plain)

    @staticmethod
    async def static_coroutine() -> None:
        pass

    @functools.wraps(plain)
    def wrapped(self) -> None:
        pass


if sys.version_info >= (3, 12):
    Bodies.marked = inspect.markcoroutinefunction(lambda self: None)  # pyright: ignore[reportAttributeAccessIssue]  # set for this test


NAMES = [name for name in vars(Bodies) if not name.startswith("_")]


@pytest.mark.parametrize("name", NAMES)
def test_is_async_tells_what_inspect_tells(name: str) -> None:
    body: Any = getattr(Bodies(), name)
    assert _is_async(body) is inspect.iscoroutinefunction(body)
