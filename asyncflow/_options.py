"""Options: the `RunOptions` users pass to a run and the keywords of a task class, each validated once.

Imported by `import asyncflow`, this module imports no placement, pathlib or
concurrent.futures until a run (or a class's ``job_prefix``) needs them: a command's help
and a job's worker start without them.

Environment variables are read here and nowhere else: ``AF_CACHE_DIR`` (cache
location), ``AF_DETECT_SOURCE_CHANGE`` (``0``: a change of code does not re-run a task),
``AF_LEASE_TTL`` (seconds a lease binds without renewal) and ``AF_KEEP_RUNS`` (how many
runs the history keeps).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias, TypedDict

from ._errors import OptionError, TaskDefinitionError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Executor
    from pathlib import Path

    from ._placements import Dask, Placement, Ray, Where

# Seconds a lease binds without renewal (a holder renews thrice as often): how long a
# holder that hangs or is paused blocks others before they compute its nodes.
LEASE_TTL = 15.0
KEEP_RUNS = 100  # runs the history keeps, with their attempts (the oldest go first)

# A string: its classes are imported only when a run needs them (see the module doc).
ExecutorOption: TypeAlias = 'Literal["thread", "process"] | Executor | Dask | Ray'
OnError = Literal["cancel", "continue"]


class RunOptions(TypedDict, total=False):
    """Keyword options of `Task.run` and its siblings; every one may be left out."""

    rate_limits: Mapping[str, int]
    """At most ``n`` tasks of a channel run at once (``{channel: n}``)."""
    max_workers: int
    """Plain ``def`` bodies working at once, in threads (or processes)."""
    executor: ExecutorOption
    """Where plain ``def`` bodies run: ``"thread"`` (default), ``"process"``, an Executor, `Dask` (or a bare ``distributed.Client``) or `Ray`."""
    prefixes: Mapping[str, Sequence[str] | Placement]
    """Job prefix (or a placement: `Slurm`, `Host`, `Dask`, `Ray`) per channel; wins over ``job_prefix``."""
    hosts: Mapping[str, str | Placement]
    """SSH host per channel: ``"ssh://user@host:port"`` or a `Host`."""
    cache_dir: str | os.PathLike[str]
    """Cache location; default ``$AF_CACHE_DIR``, else ``./.cache``."""
    detect_source_change: bool
    """Re-run a task whose code changed; default on (``AF_DETECT_SOURCE_CHANGE=0``)."""
    on_error: OnError
    """``"cancel"`` (default) stops at the first failure; ``"continue"`` finishes the rest."""
    progress: bool
    """Show live progress per task class on a terminal or in a notebook cell (log lines otherwise); default off."""


class CacheOptions(TypedDict, total=False):
    """Keyword options of `Task.clear` and its siblings."""

    cache_dir: str | os.PathLike[str]
    """Cache location; default ``$AF_CACHE_DIR``, else ``./.cache``."""


# Settings and ClassOptions are named tuples, not dataclasses: `import asyncflow` defines
# them, and the dataclasses module would cost it inspect's import (a quarter of the time).


class Settings(NamedTuple):
    """Validated run options with their defaults filled in (made by `settings_from` only)."""

    cache_dir: Path
    rate_limits: Mapping[str, int]
    max_workers: int | None
    executor: ExecutorOption
    prefixes: Mapping[str, Where]
    hosts: Mapping[str, Placement]
    detect_source_change: bool
    on_error: OnError
    progress: bool
    lease_ttl: float
    keep_runs: int


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def resolve_cache_dir(option: str | os.PathLike[str] | None) -> Path:
    """Return the cache directory: the option, else ``$AF_CACHE_DIR``, else ``./.cache``."""
    from pathlib import Path

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


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise OptionError(
            f"${name}={raw!r} is not a number of seconds; set it to a positive number, e.g. {default:g}"
        )
    return value


def _env_count(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise OptionError(f"${name}={raw!r} is not a positive whole number; set it to e.g. {default}")
    return value


def _fail(name: str, value: object, expected: str) -> OptionError:
    return OptionError(f"run option {name}={value!r} is invalid: expected {expected}")


def as_where(value: object) -> Where | None:
    """Return a job prefix as a tuple of strings, or a placement as is; None if neither."""
    if isinstance(value, (list, tuple)):
        items: list[object] = list(value)  # pyright: ignore[reportUnknownArgumentType]  # user input
        if items and all(isinstance(a, str) for a in items):
            return tuple(str(a) for a in items)
        return None
    from ._placements import Host, Slurm, as_engine  # not before a placement may be there

    if isinstance(value, (Slurm, Host)):
        return value
    return as_engine(value)


def _channel_map(options: Mapping[str, Any], name: str, expected: str) -> list[tuple[str, Any]]:
    raw: Any = options.get(name, {})
    if not isinstance(raw, Mapping):
        raise _fail(name, raw, expected)
    entries: list[tuple[Any, Any]] = list(raw.items())  # pyright: ignore[reportUnknownArgumentType]  # user input
    for channel, _ in entries:
        if not isinstance(channel, str):
            raise _fail(name, options[name], expected)
    return entries


def _is_executor(value: object) -> bool:
    from concurrent.futures import Executor

    return isinstance(value, Executor)


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
    # concurrent.futures and the placements are imported only when an option names them:
    # they take milliseconds of a first run, which needs neither by default.
    if executor not in ("thread", "process") and not _is_executor(executor):
        from ._placements import as_engine

        executor = as_engine(executor)
        if executor is None:
            raise _fail(
                "executor",
                options["executor"],
                '"thread", "process", a concurrent.futures.Executor, Dask(client) or Ray()',
            )
    prefixes: dict[str, Where] = {}
    expected = 'a dict {channel: [command, args...], Slurm(...), Dask(client) or Ray(...)}, e.g. {"gpu": ["srun", "-p", "gpu"]}'
    for channel, prefix in _channel_map(options, "prefixes", expected):
        where = as_where(prefix)
        if where is None:
            raise _fail("prefixes", options["prefixes"], expected)
        prefixes[channel] = where
    hosts: dict[str, Placement] = {}
    expected = 'a dict {channel: "ssh://user@host:port" or Host(...)}'
    for channel, host in _channel_map(options, "hosts", expected):
        from ._placements import Host, Slurm, as_engine, parse_host_url

        if isinstance(host, str):
            hosts[channel] = parse_host_url(host)
        elif isinstance(host, (Slurm, Host)):
            hosts[channel] = host
        elif (engine := as_engine(host)) is not None:
            hosts[channel] = engine
        else:
            raise _fail("hosts", options["hosts"], expected)
    detect = options.get("detect_source_change")
    if detect is None:
        detect = _env_flag("AF_DETECT_SOURCE_CHANGE", True)
    elif not isinstance(detect, bool):
        raise _fail("detect_source_change", detect, "True or False")
    on_error = options.get("on_error", "cancel")
    if on_error not in ("cancel", "continue"):
        raise _fail("on_error", on_error, '"cancel" or "continue"')
    progress = options.get("progress", False)
    if not isinstance(progress, bool):
        raise _fail("progress", progress, "True or False")
    return Settings(
        cache_dir=resolve_cache_dir(options.get("cache_dir")),
        rate_limits=limits,
        max_workers=max_workers,
        executor=executor,
        prefixes=prefixes,
        hosts=hosts,
        detect_source_change=detect,
        on_error=on_error,
        progress=progress,
        lease_ttl=_env_seconds("AF_LEASE_TTL", LEASE_TTL),
        keep_runs=_env_count("AF_KEEP_RUNS", KEEP_RUNS),
    )


class ClassOptions(NamedTuple):
    """Class keywords of a task class, inherited by subclasses unless given again."""

    channels: tuple[str, ...] = ()
    compress_level: int = 0
    job_prefix: Where | None = None
    retries: int = 0
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    timeout: float | None = None
    version: str | None = None  # stands for the class's code (not inherited)
    hash_includes: tuple[object, ...] = ()  # more code or values to fingerprint (not inherited)


CLASS_KEYWORDS = (
    "channel",
    "compress_level",
    "job_prefix",
    "retries",
    "retry_delay",
    "retry_backoff",
    "timeout",
    "version",
    "hash_includes",
)


def class_options(owner: str, base: ClassOptions, given: Mapping[str, Any]) -> ClassOptions:
    """Validate the class keywords `given` to class `owner`, on top of those it inherits.

    ``version`` and ``hash_includes`` are not inherited: they speak for the code of the
    class they are given to (a subclass's fingerprint includes its bases' own).

    Raises:
        TaskDefinitionError: a keyword's value is not of the accepted kind.
    """

    def bad(name: str, expected: str) -> TaskDefinitionError:
        return TaskDefinitionError(f"class {owner}({name}={given[name]!r}): expected {expected}")

    out: dict[str, Any] = {}
    if "channel" in given:
        value = given["channel"]
        channels = [value] if isinstance(value, str) else value
        if not isinstance(channels, (list, tuple)) or not all(
            isinstance(c, str) and c
            for c in channels  # pyright: ignore[reportUnknownVariableType]
        ):
            raise bad("channel", "a channel name or a list of channel names")
        out["channels"] = tuple(channels)  # pyright: ignore[reportUnknownArgumentType]
    if "compress_level" in given:
        level = given["compress_level"]
        if type(level) is not int or not -1 <= level <= 9:
            raise bad("compress_level", "an int from 0 (no compression) to 9, or -1 (zlib default)")
        out["compress_level"] = level
    if "job_prefix" in given:
        prefix = given["job_prefix"]
        where = None if prefix is None else as_where(prefix)
        if prefix is not None and where is None:
            raise bad("job_prefix", 'a non-empty list of strings, e.g. ["srun", "-p", "gpu"], or Slurm(...)')
        out["job_prefix"] = where
    if "retries" in given:
        if type(given["retries"]) is not int or given["retries"] < 0:
            raise bad("retries", "an int >= 0")
        out["retries"] = given["retries"]
    for name in ("retry_delay", "retry_backoff"):
        if name in given:
            if type(given[name]) not in (int, float) or given[name] < 0:
                raise bad(name, "a number >= 0")
            out[name] = float(given[name])
    if "timeout" in given:
        timeout = given["timeout"]
        if timeout is not None and (type(timeout) not in (int, float) or timeout <= 0):
            raise bad("timeout", "a number of seconds > 0, or None")
        out["timeout"] = None if timeout is None else float(timeout)
    version = given.get("version")
    if version is not None and (type(version) not in (str, int) or version == ""):
        raise bad("version", 'a non-empty str (or an int), e.g. version="2"')
    out["version"] = None if version is None else str(version)
    includes = given.get("hash_includes", ())
    if not isinstance(includes, (list, tuple)):
        raise bad("hash_includes", "a list of functions, classes, modules or values")
    out["hash_includes"] = tuple(includes)  # pyright: ignore[reportUnknownArgumentType]  # anything goes
    return base._replace(**out)
