"""Why nodes are fresh or stale, without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncflow import TaskFailedError
from asyncflow._explain import explain
from asyncflow.examples.binomial import Choose

from .test_scheduler import Boom


async def test_explain_reasons(cache_dir: Path) -> None:
    before = {repr(s.task): s for s in await explain(Choose(4, 2), cache_dir=cache_dir)}
    assert {s.reason for s in before.values()} == {"no result"}
    await Choose(4, 2).run(cache_dir=cache_dir)
    after = await explain(Choose(4, 2), cache_dir=cache_dir)
    assert {s.state for s in after} == {"fresh"}
    assert after[-1].key == Choose(4, 2).__af_key__  # deps first, root last
    await Choose(2, 1).clear(cache_dir=cache_dir)
    status = {repr(s.task): s for s in await explain(Choose(4, 2), cache_dir=cache_dir)}
    assert status["Choose(2, 1)"].reason == "no result"
    assert status["Choose(3, 1)"].reason == "upstream Choose(2, 1) is stale"
    assert status["Choose(1, 1)"].state == "fresh"
    # Re-made upstream: its dependents' records no longer match it.
    await Choose(2, 1).run(cache_dir=cache_dir)
    status = {repr(s.task): s for s in await explain(Choose(4, 2), cache_dir=cache_dir)}
    assert status["Choose(2, 1)"].state == "fresh"
    assert status["Choose(3, 1)"].reason == "upstream Choose(2, 1) changed"


async def test_explain_failed_last_time(cache_dir: Path) -> None:
    with pytest.raises(TaskFailedError):
        await Boom(1).run(cache_dir=cache_dir)
    (status,) = await explain(Boom(1), cache_dir=cache_dir)
    assert status.state == "failed"
    assert status.reason.startswith("Boom(1) failed: ValueError: odd 1")
