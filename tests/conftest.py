"""Shared fixtures: both anyio backends, and a fresh cache directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest


# Name both backends, so a missing trio fails instead of vanishing.
@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A cache directory of the test's own (never the repository's)."""
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _no_ambient_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A test that forgets cache_dir= must not write into the repository.
    monkeypatch.setenv("AF_CACHE_DIR", str(tmp_path / "ambient-cache"))
    monkeypatch.delenv("AF_DETECT_SOURCE_CHANGE", raising=False)
    monkeypatch.delenv("AF_LEASE_TTL", raising=False)
    monkeypatch.delenv("AF_KEEP_RUNS", raising=False)
