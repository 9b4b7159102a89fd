"""Run options: the `RunOptions` TypedDict users pass, validated once into `Settings`.

Environment variables are read here and nowhere else: ``AF_CACHE_DIR`` (cache
location) and ``AF_DETECT_SOURCE_CHANGE`` (``0`` turns source hashing off).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypedDict, Union

from ._errors import OptionError

ExecutorOption: TypeAlias = Union[Literal["thread", "process"], Executor]  # noqa: UP007 - evaluated at run time on 3.10
OnError = Literal["cancel", "continue"]


class RunOptions(TypedDict, total=False):
    """Keyword options of `Task.run` and its siblings; every one may be left out."""

    rate_limits: Mapping[str, int]
    """At most ``n`` tasks of a channel run at once (``{channel: n}``)."""
    max_workers: int
    """Threads (or processes) available to plain ``def`` bodies."""
    executor: ExecutorOption
    """Where plain ``def`` bodies run: ``"thread"`` (default), ``"process"`` or an Executor."""
    prefixes: Mapping[str, Sequence[str]]
    """Job prefix per channel (``{"gpu": ["srun", "-p", "gpu"]}``); wins over ``job_prefix``."""
    cache_dir: str | os.PathLike[str]
    """Cache location; default ``$AF_CACHE_DIR``, else ``./.cache``."""
    detect_source_change: bool
    """Re-run a task whose class source changed; default on (``AF_DETECT_SOURCE_CHANGE=0``)."""
    on_error: OnError
    """``"cancel"`` (default) stops at the first failure; ``"continue"`` finishes the rest."""


class CacheOptions(TypedDict, total=False):
    """Keyword options of `Task.clear` and its siblings."""

    cache_dir: str | os.PathLike[str]
    """Cache location; default ``$AF_CACHE_DIR``, else ``./.cache``."""


@dataclass(frozen=True)
class Settings:
    """Validated run options with their defaults filled in."""

    cache_dir: Path
    rate_limits: Mapping[str, int] = field(default_factory=dict[str, int])
    max_workers: int | None = None
    executor: ExecutorOption = "thread"
    prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict[str, tuple[str, ...]])
    detect_source_change: bool = True
    on_error: OnError = "cancel"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def resolve_cache_dir(option: str | os.PathLike[str] | None) -> Path:
    """Return the cache directory: the option, else ``$AF_CACHE_DIR``, else ``./.cache``."""
    if option is not None:
        return Path(option).absolute()
    env = os.environ.get("AF_CACHE_DIR")
    return Path(env if env else ".cache").absolute()


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise OptionError(f"${name}={raw!r} is not a boolean; set it to 1 or 0")


def _fail(name: str, value: object, expected: str) -> OptionError:
    return OptionError(f"run option {name}={value!r} is invalid: expected {expected}")


def settings_from(options: Mapping[str, Any]) -> Settings:
    """Validate `options` (a `RunOptions`) once, with defaults and environment applied.

    Raises:
        OptionError: an unknown option name or a value of the wrong kind.
    """
    unknown = set(options) - set(RunOptions.__annotations__)
    if unknown:
        known = ", ".join(sorted(RunOptions.__annotations__))
        raise OptionError(f"unknown run option(s) {sorted(unknown)}; the options are {known}")
    cache_dir = options.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise _fail("cache_dir", cache_dir, "a path")
    rate_limits = options.get("rate_limits", {})
    if not isinstance(rate_limits, Mapping):
        raise _fail("rate_limits", rate_limits, "a dict {channel: positive int}")
    limits: dict[str, int] = {}
    pairs: list[tuple[Any, Any]] = list(rate_limits.items())  # pyright: ignore[reportUnknownArgumentType]  # user input
    for channel, limit in pairs:
        if not isinstance(channel, str) or type(limit) is not int or limit < 1:
            raise _fail("rate_limits", options["rate_limits"], "a dict {channel: positive int}")
        limits[channel] = limit
    max_workers = options.get("max_workers")
    if max_workers is not None and (type(max_workers) is not int or max_workers < 1):
        raise _fail("max_workers", max_workers, "a positive int")
    executor = options.get("executor", "thread")
    if executor not in ("thread", "process") and not isinstance(executor, Executor):
        raise _fail("executor", executor, '"thread", "process" or a concurrent.futures.Executor')
    prefixes: dict[str, tuple[str, ...]] = {}
    raw_prefixes: Any = options.get("prefixes", {})
    expected = 'a dict {channel: [command, args...]}, e.g. {"gpu": ["srun", "-p", "gpu"]}'
    if not isinstance(raw_prefixes, Mapping):
        raise _fail("prefixes", raw_prefixes, expected)
    entries: list[tuple[Any, Any]] = list(raw_prefixes.items())  # pyright: ignore[reportUnknownArgumentType]  # user input
    for channel, prefix in entries:
        if (
            not isinstance(channel, str)
            or not isinstance(prefix, (list, tuple))
            or not prefix
            or not all(isinstance(a, str) for a in prefix)  # pyright: ignore[reportUnknownVariableType]
        ):
            raise _fail("prefixes", options["prefixes"], expected)
        prefixes[channel] = tuple(prefix)  # pyright: ignore[reportUnknownArgumentType]
    detect = options.get("detect_source_change")
    if detect is None:
        detect = _env_flag("AF_DETECT_SOURCE_CHANGE", True)
    elif not isinstance(detect, bool):
        raise _fail("detect_source_change", detect, "True or False")
    on_error = options.get("on_error", "cancel")
    if on_error not in ("cancel", "continue"):
        raise _fail("on_error", on_error, '"cancel" or "continue"')
    return Settings(
        cache_dir=resolve_cache_dir(options.get("cache_dir")),
        rate_limits=limits,
        max_workers=max_workers,
        executor=executor,
        prefixes=prefixes,
        detect_source_change=detect,
        on_error=on_error,
    )
