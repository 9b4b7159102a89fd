"""SSH hosts: ``hosts={channel: "ssh://user@host:port"}`` or ``hosts={channel: Host(...)}``.

A body on an SSH host runs as ``python -u -m asyncflow.worker --exit-on-stdin-eof JOB``
there. The payload is written locally (`payload.write_payload`), uploaded over SFTP to
a job directory under the host's ``workdir``, and the answer downloaded the same way;
the remote job directory is removed afterwards. stdout and stderr stream back live,
labelled with the task, as for job prefixes. Host keys are checked against
``known_hosts`` unless the user passes ``Host(known_hosts=None)``. Each way of failing
to reach a host (unknown or changed host key, connection refused, no answer, key
refused, no remote python) is a `HostError` of its own `reason`, naming the host and
what to do. This module only imports asyncssh (0.3 s) when a run first uses a host.

Why a thread of its own: asyncssh is built on asyncio, and cannot run under trio (its
maintainer points trio users at trio-asyncio, ronf/asyncssh#208); asyncflow runs on
both. So every SSH job runs in one asyncio event loop in a thread of its own, shared by
all the runs of the process while any of them uses a host (anyio's
`BlockingPortalProvider`), and the caller's loop, asyncio or trio alike, awaits each
job with `BlockingPortal.call_async`. That holds no thread per job, and cancelling the
caller cancels the job inside the SSH loop and waits, shielded, for its cleanup (the
remote worker's end, the job directory's removal; both bounded in time). One path for
both backends, so the tests on each check the same code. `sshconn.py` holds that side.

Ending a remote job: closing an SSH channel does not stop a command that runs without
a pty, and sshd refuses signals for root logins. The worker therefore runs with
``--exit-on-stdin-eof``: a cancelled job gets an EOF on its stdin, then its channel is
closed, and the worker exits at once.
"""

from __future__ import annotations

import secrets
import shlex
import urllib.parse
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import anyio
from anyio.from_thread import BlockingPortalProvider

from .._cache import blobs
from .._errors import HostError, OptionError
from . import payload
from .base import Outcome
from .prefix import job_failure

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from anyio.from_thread import BlockingPortal

    from .._task import Task
    from .base import Runner
    from .sshconn import JobEnd, Pool


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
    "sessions_per_connection": int,
    "connect_timeout": float,
}


def _problem(value_of: Callable[[str], object]) -> tuple[str, str] | None:
    """Return the first invalid `Host` field as ``name=value`` and what it should be; or None."""
    for name, ok, expected in _CHECKS:
        value = value_of(name)
        if not ok(value):
            return f"{name}={value!r}", expected
    return None


# The SSH thread: started by the first run that uses a host, stopped when the last ends.
_SSH_LOOP = BlockingPortalProvider(backend="asyncio")

_URL_FORM = "ssh://[user@]host[:port][?python=...&workdir=...&key_file=...&known_hosts=...]"


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

    def __post_init__(self) -> None:
        # Checked at run time too: hosts often come from configuration files.
        problem = _problem(lambda name: getattr(self, name))
        if problem is not None:
            field, expected = problem
            raise OptionError(f"Host({self.host!r}, ...): {field} is invalid: expected {expected}")

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

    def ssh_command(self, command: str) -> tuple[str, ...]:
        """Return an OpenSSH command line that runs the remote `command` (for messages)."""
        destination = self.host if self.user is None else f"{self.user}@{self.host}"
        return ("ssh", "-p", str(self.port), destination, command)

    def make_runner(self, cache_dir: Path, limiter: anyio.CapacityLimiter | None) -> Runner:
        """Return a runner for this host; `limiter` bounds its jobs (``max_workers``)."""
        return SSHRunner(self, cache_dir, limiter=limiter)


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


class SSHRunner:
    """Runs bodies on one SSH host, over the connections of one run (see the module doc)."""

    def __init__(self, host: Host, cache_dir: Path, *, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.host = host
        self.cache_dir = cache_dir
        self._limiter = limiter
        self._started = anyio.Lock()
        self._joined: tuple[BlockingPortal, Pool] | None = None  # the SSH thread, our pool in it

    async def run(self, task: Task[Any, Any]) -> Outcome:
        job = await anyio.to_thread.run_sync(
            payload.write_payload, self.cache_dir, secrets.token_hex(8), task
        )
        label = repr(task)
        try:
            portal, pool = await self._start()
            if self._limiter is None:
                end = await portal.call_async(pool.run_job, job, label)
            else:
                async with self._limiter:
                    end = await portal.call_async(pool.run_job, job, label)
            answer = await anyio.to_thread.run_sync(payload.read_answer, job)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(payload.remove, job)
        if end.returncode == 0 and answer is not None and answer.pickled is not None:
            return Outcome(blobs.loads(answer.pickled), answer.pickled)
        if answer is None:
            _check_python(self.host, end)
        raise job_failure(label, list(end.command), end.returncode, answer, end.stderr_tail)

    async def aclose(self) -> None:
        """Close this run's connections to the host, and let go of the SSH thread."""
        if self._joined is None:
            return
        portal, pool = self._joined
        self._joined = None
        with anyio.CancelScope(shield=True):
            try:
                await portal.call_async(pool.aclose)
            finally:
                await anyio.to_thread.run_sync(_SSH_LOOP.__exit__, None, None, None)

    async def _start(self) -> tuple[BlockingPortal, Pool]:
        """Join the SSH thread and make this run's pool there, on first use."""
        async with self._started:
            if self._joined is None:
                # Shielded: a lease taken and then lost to a cancellation would keep the
                # thread alive for good.
                with anyio.CancelScope(shield=True):
                    self._joined = await _join(self.host)
            joined = self._joined
            assert joined is not None, "asyncflow bug: the SSH pool was not made"
            return joined


async def _join(host: Host) -> tuple[BlockingPortal, Pool]:
    """Take a lease on the SSH thread (starting it if need be), and make a pool for `host` there."""
    portal = await anyio.to_thread.run_sync(_SSH_LOOP.__enter__)
    try:
        return portal, await portal.call_async(_new_pool, host)
    except BaseException:
        await anyio.to_thread.run_sync(_SSH_LOOP.__exit__, None, None, None)
        raise


def _new_pool(host: Host) -> Pool:
    """Make a pool (in the SSH thread, where importing asyncssh does not block the caller)."""
    from .sshconn import Pool

    return Pool(host)


def _check_python(host: Host, end: JobEnd) -> None:
    """Raise a `HostError` when a job without an answer never got to run the worker."""
    lines = end.stderr_tail.strip().splitlines()
    last = lines[-1].strip() if lines else "nothing on stderr"
    if end.returncode in (126, 127):  # the shell's "cannot execute" / "command not found"
        raise HostError(
            f"{host.url}: the remote python {host.python!r} cannot be started (exit status "
            f"{end.returncode}: {last}); pass Host(python=...) the absolute path of a Python "
            "that has asyncflow installed",
            host=host.url,
            reason="python",
        )
    if "No module named 'asyncflow" in end.stderr_tail or "No module named asyncflow" in end.stderr_tail:
        raise HostError(
            f"{host.url}: asyncflow is not installed for the remote python {host.python!r} ({last}); "
            "install it there (`pip install asyncflow`), or pass Host(python=...) a Python that has it",
            host=host.url,
            reason="python",
        )
