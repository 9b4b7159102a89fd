"""Options: the class keywords (channel, compress_level, job_prefix, retries, timeout) and the run options."""

from __future__ import annotations

import types
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import asyncflow
from asyncflow import OptionError, Task
from asyncflow._options import settings_from
from asyncflow.examples.binomial import Choose

from .test_cache import Plain
from .test_runners_prefix import Where
from .test_scheduler import Total

if TYPE_CHECKING:
    from pathlib import Path


# Task classes (module level: runners in other processes import them).


ATTEMPTS: Counter[str] = Counter()


class Flaky(Task, retries=2, retry_delay=0):
    """Fail on the first `failures` attempts (counted per tag), then succeed."""

    def build_task(self, tag: str, failures: int) -> None:
        self.tag, self.failures = tag, failures

    async def run_task(self) -> int:
        ATTEMPTS[self.tag] += 1
        if ATTEMPTS[self.tag] <= self.failures:
            raise RuntimeError(f"attempt {ATTEMPTS[self.tag]} fails")
        return ATTEMPTS[self.tag]


class Slow(Task, timeout=0.2):
    def build_task(self) -> None:
        pass

    async def run_task(self) -> None:
        await anyio.Event().wait()  # never set: only the timeout ends this


class Compressed(Task, compress_level=9):
    def build_task(self, n: int) -> None:
        self.n = n

    async def run_task(self) -> str:
        return "x" * self.n


class Prefixed(Task, job_prefix=["srun", "-p", "gpu"], retries=0, timeout=None):
    def build_task(self) -> None:
        pass

    def run_task(self) -> None:
        pass


# Class keywords.


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("channel", 5),
        ("channel", ""),
        ("channel", ["gpu", 3]),
        ("channel", ["gpu", ""]),
        ("channel", {"gpu": 1}),
        ("compress_level", 10),
        ("compress_level", -2),
        ("compress_level", "3"),
        ("compress_level", 1.5),
        ("compress_level", True),
        ("job_prefix", "srun"),
        ("job_prefix", []),
        ("job_prefix", ["srun", 1]),
        ("retries", -1),
        ("retries", 1.5),
        ("retries", "2"),
        ("retries", None),
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", "5"),
        ("timeout", True),
        ("version", ""),
        ("version", 1.5),
        ("version", ["2"]),
        ("hash_includes", "helpers"),
        ("hash_includes", len),
    ],
)
def test_bad_class_keyword_value_is_refused(keyword: str, value: object) -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        types.new_class("BadOptions", (Task,), {keyword: value})
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "BadOptions" in message
    assert keyword in message


def test_unknown_class_keyword_is_refused() -> None:
    with pytest.raises(asyncflow.TaskDefinitionError) as info:
        types.new_class("Colourful", (Task,), {"colour": "red"})
    message = str(info.value)
    assert "Colourful" in message
    assert "colour" in message
    assert "channel" in message  # the accepted keywords are listed


@pytest.mark.parametrize(
    "keywords",
    [
        {"channel": "gpu"},
        {"channel": ["gpu", "mem"]},
        {"channel": ("gpu",)},
        {"compress_level": 0},
        {"compress_level": 9},
        {"job_prefix": ["srun", "-p", "x"]},
        {"job_prefix": None},
        {"retries": 0},
        {"retries": 3, "retry_delay": 0.5, "retry_backoff": 1},
        {"timeout": 2},
        {"timeout": 0.5},
        {"timeout": None},
        {"version": "2"},
        {"version": 3},
        {"hash_includes": [len, types, 3]},
        {"hash_includes": ()},
    ],
)
def test_good_class_keywords_are_accepted(keywords: dict[str, Any]) -> None:
    cls = types.new_class("GoodOptions", (Task,), keywords)
    assert issubclass(cls, Task)


def test_version_and_hash_includes_are_not_inherited() -> None:
    base = types.new_class("Versioned", (Task,), {"version": 2, "hash_includes": [len]})
    child = types.new_class("Child", (base,), {})
    assert (base.__af_options__.version, base.__af_options__.hash_includes) == ("2", (len,))
    assert (child.__af_options__.version, child.__af_options__.hash_includes) == (None, ())


def test_class_keywords_on_module_level_classes() -> None:
    # Defining these (above) did not raise; they are tasks like any other.
    assert Prefixed.task_name == f"{__name__}.Prefixed"
    assert Compressed.task_name == f"{__name__}.Compressed"


# What the keywords do.


async def test_retries_keyword(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30):
        value, stats = await Flaky(tag, 2).run_with_stats(cache_dir=cache_dir)
    assert value == 3
    assert stats[Flaky.task_name].retried == 2
    assert stats[Flaky.task_name].run == 1


async def test_retries_keyword_gives_up(cache_dir: Path) -> None:
    tag = str(cache_dir)
    with anyio.fail_after(30), pytest.raises(asyncflow.TaskFailedError) as info:
        await Flaky(tag, 5).run(cache_dir=cache_dir)
    assert ATTEMPTS[tag] == 3  # one attempt and two retries
    assert info.value.task == f"Flaky({tag!r}, 5)"


async def test_timeout_keyword(cache_dir: Path) -> None:
    with anyio.fail_after(30), pytest.raises(asyncflow.TaskFailedError) as info:
        await Slow().run(cache_dir=cache_dir)
    assert "Slow()" in str(info.value)
    assert "timed out" in str(info.value)


async def test_compress_level_keyword_round_trips(cache_dir: Path) -> None:
    with anyio.fail_after(30):
        assert await Compressed(100_000).run(cache_dir=cache_dir) == "x" * 100_000
        assert await Compressed(100_000).result(cache_dir=cache_dir) == "x" * 100_000


# Run options.


async def test_bad_options_are_refused(cache_dir: Path) -> None:
    with pytest.raises(OptionError, match="unknown run option"):
        await Total(1).run(cache_dir=cache_dir, rate_limit={"gpu": 1})  # type: ignore[call-arg]
    with pytest.raises(OptionError, match="rate_limits"):
        await Total(1).run(cache_dir=cache_dir, rate_limits={"gpu": 0})
    with pytest.raises(OptionError, match="on_error"):
        await Total(1).run(cache_dir=cache_dir, on_error="ignore")  # type: ignore[typeddict-item]


def test_progress_option_is_checked(cache_dir: Path) -> None:
    with pytest.raises(OptionError, match="progress='yes' is invalid: expected True or False"):
        Choose(3, 1).run_graph(cache_dir=cache_dir, progress="yes")  # type: ignore[typeddict-item]


async def test_prefixes_option_is_checked(cache_dir: Path) -> None:
    with pytest.raises(OptionError, match="prefixes"):
        await Where(1).run(cache_dir=cache_dir, prefixes={"cluster": "srun -p x"})  # type: ignore[dict-item]


# The cache_dir option's default: the environment, else ./.cache.


async def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AF_CACHE_DIR", str(tmp_path / "env-cache"))
    await Plain().run()
    assert (tmp_path / "env-cache" / "asyncflow" / "index.sqlite").exists()


async def test_cache_dir_default_is_dot_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AF_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    await Plain().run()
    assert (tmp_path / ".cache" / "asyncflow" / "index.sqlite").exists()


# The lease TTL: seconds a paused or hung holder keeps others waiting.


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "inf", "nan"])
def test_lease_ttl_from_environment_is_checked(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("AF_LEASE_TTL", raw)
    with pytest.raises(OptionError, match=rf"\$AF_LEASE_TTL='{raw}' is not a number of seconds"):
        settings_from({})


def test_lease_ttl_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from({}).lease_ttl == 15
    monkeypatch.setenv("AF_LEASE_TTL", "0.5")
    assert settings_from({}).lease_ttl == 0.5
