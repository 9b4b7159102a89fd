"""Where bodies run besides this process: `Slurm`, `Host`, `Dask` and `Ray` settings, validated. No I/O here.

These are values, as run options are: frozen, hashable (a run makes one runner per
distinct placement), checked when made. Which runner serves a placement is decided in
`_runners/choose.py`; how a host is parsed from ``ssh://`` text is decided here. Neither
dask nor ray is imported here: a Dask client is recognised by its class's module.
"""

from __future__ import annotations

import shlex
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, Union

from ._errors import OptionError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from distributed import Client


@dataclass(frozen=True)
class Slurm:
    """Run bodies as Slurm jobs: ``prefixes={"cluster": Slurm(partition="gpu")}``.

    Args:
        partition: ``--partition``; None for the cluster's default.
        time: ``--time`` limit, e.g. ``"00:30:00"``.
        extra: more arguments for ``srun``/``sbatch``, e.g. ``["--gres=gpu:1"]``.
        style: ``"srun"`` (default: output streams live, one step per body) or
            ``"sbatch"`` (a batch job per body, waited for with ``sbatch --wait``).
        python: the interpreter on the compute nodes (default: this one, which works
            when the nodes share this filesystem, as on most clusters).
        workers: None (default) runs each body as a job of its own; N starts up to N
            long-lived workers for the run (one ``srun`` job each, as bodies need them)
            that take many bodies each, so a short body costs milliseconds instead of a
            job start. ``style="srun"`` only.

    Raises:
        OptionError: an argument is not of the accepted kind.
    """

    partition: str | None = None
    time: str | None = None
    extra: Sequence[str] = field(default=())
    style: Literal["srun", "sbatch"] = "srun"
    python: str = sys.executable
    workers: int | None = None

    def __post_init__(self) -> None:
        _check_workers("Slurm", self.workers)
        if self.workers is not None and self.style != "srun":
            raise OptionError(
                f"Slurm(style={self.style!r}, workers={self.workers}): warm workers are srun steps; "
                'pass style="srun", or workers=None for one sbatch job per body'
            )
        for name in ("partition", "time"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise OptionError(f"Slurm({name}={value!r}): expected None or a non-empty string")
        if isinstance(self.extra, str) or not isinstance(self.extra, (list, tuple)):
            raise OptionError(f"Slurm(extra={self.extra!r}): expected a list of strings")
        extra = tuple(self.extra)
        if not all(isinstance(a, str) for a in extra):  # pyright: ignore[reportUnnecessaryIsInstance]  # user input
            raise OptionError(f"Slurm(extra={self.extra!r}): expected a list of strings")
        if self.style not in ("srun", "sbatch"):
            raise OptionError(f'Slurm(style={self.style!r}): expected "srun" or "sbatch"')
        if not (isinstance(self.python, str) and self.python):  # pyright: ignore[reportUnnecessaryIsInstance]  # user input
            raise OptionError(f"Slurm(python={self.python!r}): expected a path or command name")
        object.__setattr__(self, "extra", extra)  # frozen: normalise to a hashable tuple

    def options(self, name: str) -> list[str]:
        """Return the options shared by ``srun`` and ``sbatch`` for job `name`."""
        out = ["--job-name", name]
        if self.partition is not None:
            out += ["--partition", self.partition]
        if self.time is not None:
            out += ["--time", self.time]
        return [*out, *self.extra]


def _check_workers(cls: str, workers: object) -> None:
    if workers is not None and not (type(workers) is int and workers >= 1):
        raise OptionError(
            f"{cls}(workers={workers!r}): expected None (one job per body) or an int >= 1 (a warm pool)"
        )


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _count(least: int) -> Callable[[object], bool]:
    return lambda value: type(value) is int and value >= least


_CHECKS: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("host", _text, "a host name or address"),
    ("port", lambda v: type(v) is int and 0 < v < 65536, "an int from 1 to 65535"),
    ("user", lambda v: v is None or _text(v), "None or a login name"),
    ("python", _text, "a path or command name"),
    ("workdir", lambda v: v is None or _text(v), "None or a directory"),
    ("key_file", lambda v: v is None or _text(v), "None or a private key file"),
    ("known_hosts", lambda v: v is None or _text(v), "None or a known_hosts file"),
    ("connections", _count(1), "an int >= 1"),
    ("workers", lambda v: v is None or _count(1)(v), "None (one job per body) or an int >= 1 (a warm pool)"),
    ("sessions_per_connection", _count(2), "an int >= 2 (one session for SFTP, one per job)"),
    (
        "connect_timeout",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "a positive number of seconds",
    ),
)
_URL_PARAMS: dict[str, Callable[[str], object]] = {
    "python": str,
    "workdir": str,
    "key_file": str,
    "known_hosts": str,
    "connections": int,
    "workers": int,
    "sessions_per_connection": int,
    "connect_timeout": float,
}
_URL_FORM = "ssh://[user@]host[:port][?python=...&workdir=...&key_file=...&known_hosts=...]"


def _problem(value_of: Callable[[str], object]) -> tuple[str, str] | None:
    """Return the first invalid `Host` field as ``name=value`` and what it should be; or None."""
    for name, ok, expected in _CHECKS:
        value = value_of(name)
        if not ok(value):
            return f"{name}={value!r}", expected
    return None


@dataclass(frozen=True)
class Host:
    """An SSH host that task bodies run on: ``hosts={"gpu": Host("node7", user="me")}``.

    The remote side needs a Python with asyncflow installed, and the modules that hold
    the task classes importable there (a class from a taskfile or ``__main__`` travels
    with its payload). Jobs run through the login shell, which must be a POSIX shell.

    Attributes:
        host: the host name or address.
        port: the SSH port.
        user: the login name; None for the local user name (or ``~/.ssh/config``'s).
        python: the remote interpreter; an absolute path avoids surprises from the
            remote PATH (e.g. ``"/opt/venv/bin/python"``).
        workdir: the remote directory for job files, absolute or relative to the
            remote home; None for ``~/.cache/asyncflow/jobs``.
        key_file: the client's private key file; None for ``~/.ssh``'s keys and the agent.
        known_hosts: the file the host key is checked against (OpenSSH's format,
            ``[host]:port`` entries included); a missing file is an error, and None turns
            checking off (only for hosts whose identity does not matter).
        connections: at most this many connections to the host in one run; jobs beyond
            what they can hold wait for a free session.
        sessions_per_connection: the server's ``MaxSessions`` (OpenSSH's default is
            10): one goes to SFTP, the others run one job each.
        connect_timeout: seconds to wait for a connection and its login.
        workers: None (default) runs each body as a remote command of its own; N
            starts up to N long-lived remote workers for the run (as bodies need
            them), each holding one session, that take many bodies each, so a short
            body costs milliseconds instead of a command's start. At most
            ``connections * (sessions_per_connection - 1)``.
    """

    host: str
    port: int = 22
    user: str | None = None
    python: str = "python3"
    workdir: str | None = None
    key_file: str | None = None
    known_hosts: str | None = "~/.ssh/known_hosts"
    connections: int = 4
    sessions_per_connection: int = 10
    connect_timeout: float = 30.0
    workers: int | None = None

    def __post_init__(self) -> None:
        # Checked at run time too: hosts often come from configuration files.
        problem = _problem(lambda name: getattr(self, name))
        if problem is not None:
            field, expected = problem
            raise OptionError(f"Host({self.host!r}, ...): {field} is invalid: expected {expected}")
        sessions = self.connections * (self.sessions_per_connection - 1)
        if self.workers is not None and self.workers > sessions:
            raise OptionError(
                f"Host({self.host!r}, ...): workers={self.workers} is more than its connections can "
                f"hold ({self.connections} connections x {self.sessions_per_connection - 1} sessions "
                "each, one per worker); raise connections=, or lower workers="
            )

    @property
    def url(self) -> str:
        """The host as a URL, for messages: ``ssh://user@host:port``."""
        user = "" if self.user is None else urllib.parse.quote(self.user, safe="") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}:{self.port}"

    def worker_command(self, job: str) -> str:
        """Return the remote command (a shell string, every word quoted) that runs `job`."""
        argv = [self.python, "-u", "-m", "asyncflow.worker", "--exit-on-stdin-eof", job]
        return "exec " + shlex.join(argv)

    def serve_command(self, index: int) -> str:
        """Return the remote command (a shell string) that starts warm worker number `index`."""
        argv = [self.python, "-u", "-m", "asyncflow.worker", "--serve", str(index)]
        return "exec " + shlex.join(argv)

    def ssh_command(self, command: str) -> tuple[str, ...]:
        """Return an OpenSSH command line that runs the remote `command` (for messages)."""
        destination = self.host if self.user is None else f"{self.user}@{self.host}"
        return ("ssh", "-p", str(self.port), destination, command)


def parse_host_url(url: str) -> Host:
    """Parse ``ssh://[user@]host[:port]``, with `Host` fields as query parameters.

    For example ``ssh://me@node7:2222?python=/opt/venv/bin/python&workdir=/scratch/me``.

    Raises:
        OptionError: `url` is not of that form.
    """

    def bad(what: str) -> OptionError:
        return OptionError(f"run option hosts: {url!r} {what}; expected {_URL_FORM}")

    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ssh":
        raise bad("is not an ssh:// URL")
    if parts.password is not None:
        raise bad(
            "holds a password: asyncflow logs in with keys only; drop ':password' and pass key_file=..."
        )
    if parts.path not in ("", "/"):
        raise bad("has a path; give the remote job directory as ?workdir=...")
    if parts.fragment:
        raise bad("has a #fragment")
    if not parts.hostname:
        raise bad("names no host")
    try:
        port = parts.port
    except ValueError:
        raise bad("has an invalid port") from None
    try:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise bad("has an invalid query") from None
    values: dict[str, Any] = {f.name: f.default for f in fields(Host)}
    values.update(host=parts.hostname, port=22 if port is None else port)
    values.update(user=None if parts.username is None else urllib.parse.unquote(parts.username))
    given: set[str] = set()
    for name, text in query:
        convert = _URL_PARAMS.get(name)
        if convert is None:
            raise bad(f"has an unknown parameter {name!r} (known: {', '.join(_URL_PARAMS)})")
        if name in given:
            raise bad(f"sets {name!r} twice")
        given.add(name)
        try:
            values[name] = convert(text)
        except ValueError:
            raise bad(f"has {name}={text!r}, not {'an int' if convert is int else 'a number'}") from None
    problem = _problem(values.__getitem__)
    if problem is not None:
        field, expected = problem
        raise bad(f"has {field}, not {expected}")
    return Host(**values)


def is_dask_client(value: object) -> bool:
    """Tell whether `value` is a ``distributed.Client`` (without importing distributed)."""
    return any(
        c.__module__.split(".")[0] == "distributed" and c.__name__ == "Client" for c in type(value).__mro__
    )


@dataclass(frozen=True)
class Dask:
    """Run bodies as tasks of a Dask cluster: ``executor=Dask(client)`` or ``prefixes={"big": Dask(client)}``.

    Needs ``pip install 'asyncflow[dask]'``. Each body is one Dask task, named after the
    task (``Square(3)-<token>``) in the dashboard.

    Attributes:
        client: a ``distributed.Client`` (yours: the run neither closes it nor shuts its
            cluster down), or a scheduler address (``"tcp://10.0.0.5:8786"``) that each run
            connects to and disconnects from.

    Raises:
        OptionError: `client` is neither.
    """

    client: Client | str

    def __post_init__(self) -> None:
        if not (_text(self.client) or is_dask_client(self.client)):
            raise OptionError(
                f"Dask({self.client!r}): expected a distributed.Client or a scheduler address "
                'such as "tcp://127.0.0.1:8786"'
            )

    @property
    def address(self) -> str:
        """The scheduler's address, for the history."""
        if isinstance(self.client, str):
            return self.client
        # A Client's rpc handle to its scheduler holds the address (it has no attribute of its own).
        scheduler = getattr(self.client, "scheduler", None)
        return str(getattr(scheduler, "address", None) or self.client)


def _resources_ok(value: object) -> bool:
    if not isinstance(value, Mapping):
        return False
    items: list[tuple[object, object]] = list(value.items())  # pyright: ignore[reportUnknownArgumentType]  # user input
    return all(_text(k) and _amount(v) for k, v in items)


def _amount(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Ray:
    """Run bodies as Ray tasks: ``executor=Ray()`` or ``prefixes={"gpu": Ray(num_gpus=1)}``.

    Needs ``pip install 'asyncflow[ray]'``. Each body is one Ray task named after the task
    (``Square(3)``) in the dashboard. When Ray is already initialised in this process
    (``ray.init(...)``), that connection is used as it is; otherwise the run calls
    ``ray.init(address=address)`` and ``ray.shutdown()`` at its end.

    Attributes:
        address: what ``ray.init`` is given: None starts a local Ray (or joins one started
            with ``ray start``), ``"auto"`` joins the local node's cluster,
            ``"ray://host:10001"`` connects through Ray Client.
        num_cpus: CPUs each body reserves.
        num_gpus: GPUs each body reserves.
        resources: custom resources each body reserves, e.g. ``{"big_memory": 1}``.

    Raises:
        OptionError: an argument is not of the accepted kind.
    """

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    resources: Mapping[str, float] = field(default_factory=dict[str, float], hash=False)

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, bool, str], ...] = (
            ("address", self.address is None or _text(self.address), 'None, "auto" or an address'),
            ("num_cpus", _amount(self.num_cpus), "a number >= 0"),
            ("num_gpus", _amount(self.num_gpus), "a number >= 0"),
            ("resources", _resources_ok(self.resources), "a dict {resource name: amount >= 0}"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise OptionError(f"Ray({name}={getattr(self, name)!r}): expected {expected}")
        object.__setattr__(self, "resources", dict(self.resources))  # a copy: frozen means frozen


Engine: TypeAlias = Union[Dask, Ray]  # noqa: UP007 - evaluated at run time on 3.10
"""A cluster engine that takes bodies as tasks of its own."""


def as_engine(value: object) -> Engine | None:
    """Return `value` as an `Engine` (a bare Dask client wrapped in `Dask`); None if it is none."""
    if isinstance(value, (Dask, Ray)):
        return value
    if is_dask_client(value):
        return Dask(value)  # pyright: ignore[reportArgumentType]  # a Client, told by its class
    return None


Placement: TypeAlias = Union[Slurm, Host, Dask, Ray]  # noqa: UP007 - evaluated at run time on 3.10
"""Somewhere other than this process that bodies run, chosen per channel."""

Where: TypeAlias = Union[tuple[str, ...], Slurm, Host, Dask, Ray]  # noqa: UP007 - evaluated at run time on 3.10
"""A job prefix (argv) or a placement."""
