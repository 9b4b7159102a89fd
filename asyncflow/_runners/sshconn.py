"""The asyncio side of SSH hosts: the connections to one host, and jobs run over them.

Everything here runs in the SSH thread's event loop (see `ssh.py`), which is always
asyncio, because asyncssh is; never in the caller's loop, which may be trio. The code
still uses anyio (task groups, cancel scopes, events) on top of that loop, so
cancellation reaches it the same way as everywhere else. asyncssh costs about 0.3 s to
import, so this module is imported only when a run first uses a host.

A pool opens connections on demand, one at a time, up to ``Host.connections``. Each
connection holds one SFTP session for the job files and runs up to
``Host.sessions_per_connection - 1`` jobs at once: OpenSSH refuses a session beyond
its ``MaxSessions`` (10 by default) with "open failed", so a job that finds every
connection busy waits for a slot or a new connection instead. A server that allows
fewer sessions than configured is learnt from its refusal, and the job waits again.

With ``Host(workers=N)``, jobs go to a warm pool (`warm.py`) instead: each worker is a
remote ``asyncflow.worker --serve`` holding one session for the run, given one job
directory after another on the channel's stdin, with the job's files (its answer comes
back with the reply). A lost connection loses its workers, and the next bodies start new
ones.

Big values (`values.py`) are uploaded over SFTP once per run (`Pool.ship`), to a
directory beside the jobs' that the run removes at its end; a big answer a worker spilled
beside its job directory is downloaded, then moved into that directory: a later body on
the host reads it there.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import socket
import sys
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import asyncssh
from anyio.abc import ByteReceiveStream

from .._cache import blobs
from .._errors import HostError
from . import payload
from .jobs import JobEnd, relay
from .warm import WarmPool, Worker

if TYPE_CHECKING:
    from collections import deque

    from .._placements import Host
    from .values import ValueFiles

DEFAULT_WORKDIR = ".cache/asyncflow/jobs"  # relative to the remote home directory
STOP_GRACE = 5.0  # seconds for a cancelled worker to exit after its stdin closes
CLEANUP_TIMEOUT = 10.0  # seconds for removing a job directory or closing a connection
# Job directories and files on a host, as locally (see `payload.py`); the server's umask
# may take bits away, never add them.
_PRIVATE_DIR = asyncssh.SFTPAttrs(permissions=0o700)
_PRIVATE_FILE = asyncssh.SFTPAttrs(permissions=0o600)


@dataclass(eq=False)
class _Connection:
    ssh: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    capacity: int  # jobs at once (sessions minus the SFTP one)
    busy: int = 0


class _SessionRefused(Exception):
    """The server refused a new session on a connection (its MaxSessions was reached)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Pool:
    """The connections of one run to one host; `run_job` runs a job on one of them."""

    def __init__(self, host: Host, values: ValueFiles | None = None) -> None:
        self.host = host
        self._values = values  # the run's big values (`values.py`)
        # Local path of a big value's file -> set once the file is on the host (uploaded,
        # or an answer spilled there); gone again if its upload failed.
        self._shipped: dict[str, anyio.Event] = {}
        self._values_dir = ""  # absolute remote directory of the run's values, once made
        self._connections: list[_Connection] = []
        self._capacity = host.sessions_per_connection - 1  # lowered if the server refuses
        self._limit = host.connections  # lowered if the host takes no more connections
        self._opening = False
        self._failure: HostError | None = None  # the last failed attempt to connect
        self._failures = 0
        self._changed = anyio.Event()
        self._jobs_dir = ""  # absolute remote directory, set by the first connection
        self._warm = None if host.workers is None else WarmPool(host.workers, self._start_worker)

    async def run_warm(self, job: Path, label: str, tail: deque[str]) -> JobEnd:
        """Run the job in local directory `job` on one of the host's warm workers (``Host(workers=N)``)."""
        assert self._warm is not None, "asyncflow bug: a warm job for a host without workers"
        return await self._warm.run(job, label, tail)

    async def _start_worker(self, index: int, label: str) -> Worker:
        """Start warm worker `index` on a session of its own, held until it ends."""
        command = self.host.serve_command(index)
        while True:
            connection = await self._acquire()
            try:
                process = await connection.ssh.create_process(command, encoding=None)
            except asyncssh.ChannelOpenError as exc:
                try:
                    self._refused(connection, exc.reason)
                finally:
                    self._release(connection)
                continue
            except BaseException as exc:
                self._release(connection)
                if isinstance(exc, (OSError, asyncssh.Error)):
                    raise HostError(
                        f"{self.host.url}: lost the connection while starting a worker for {label}: {exc}",
                        host=self.host.url,
                        reason="unreachable",
                    ) from exc
                raise
            return _RemoteWorker(index, self, connection, process, command)

    def _refused(self, connection: _Connection, reason: str) -> None:
        """Learn that the server refused a session on `connection` (counted in its `busy`).

        Sessions open: SFTP's and this connection's other jobs and workers. The server takes
        no more, so this job waits for one of them, as do later ones.
        """
        self._capacity = connection.capacity = max(connection.busy - 1, 0)
        if self._capacity == 0:
            raise HostError(
                f"{self.host.url}: the server refused a second session on a connection "
                f"({reason}); asyncflow needs two, one for SFTP and one per job: "
                "raise MaxSessions in its sshd_config",
                host=self.host.url,
                reason="sessions",
            ) from None

    def _release(self, connection: _Connection) -> None:
        connection.busy -= 1
        if connection.ssh.is_closed() and connection in self._connections:
            self._connections.remove(connection)
        self._notify()

    async def run_job(self, job: Path, label: str, tail: deque[str]) -> JobEnd:
        """Upload the job in local directory `job`, run it, download its answer into `job`.

        The last lines of the job's stderr are kept in `tail`; the command of the
        `JobEnd` is an OpenSSH command line that would run the same job.
        """
        while True:
            connection = await self._acquire()
            try:
                return await self._run_on(connection, job, label, tail)
            except _SessionRefused as refused:
                self._refused(connection, refused.reason)
            except (OSError, asyncssh.Error) as exc:
                if not connection.ssh.is_closed():
                    raise
                raise HostError(
                    f"{self.host.url}: lost the connection while running {label}: {exc}",
                    host=self.host.url,
                    reason="unreachable",
                ) from exc
            finally:
                self._release(connection)

    async def aclose(self) -> None:
        """End the warm workers, if any, remove the run's values, and close every connection (the run has ended)."""
        if self._warm is not None:
            await self._warm.aclose()
        connections, self._connections = self._connections, []
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            alive = [c for c in connections if not c.ssh.is_closed()]
            if self._values_dir and alive:
                with suppress(OSError, asyncssh.Error):
                    await alive[0].sftp.rmtree(self._values_dir, ignore_errors=True)  # pyright: ignore[reportUnknownMemberType]  # its onerror callback is untyped
            for connection in connections:
                connection.sftp.exit()
                connection.ssh.close()
            for connection in connections:
                await connection.ssh.wait_closed()

    # Big values.

    async def ship(self, files: list[str]) -> None:
        """Make sure the big values' files `files` (local paths) are on the host, uploading each once per run."""
        for path in dict.fromkeys(files):
            while True:
                event = self._shipped.get(path)
                if event is None:
                    break
                await event.wait()  # another job uploads it
                if self._shipped.get(path) is event:
                    break  # it is there
            if event is None:
                self._shipped[path] = event = anyio.Event()
                try:
                    await self._upload_value(path)
                except BaseException:
                    del self._shipped[path]  # a job waiting for it tries again
                    raise
                finally:
                    event.set()

    async def _upload_value(self, path: str) -> None:
        assert self._values is not None, "asyncflow bug: a value to ship without the run's values"
        connection = await self._acquire()
        try:
            await _upload(connection.sftp, Path(path), await self._remote_value(connection, path))
        except (OSError, asyncssh.Error) as exc:
            raise HostError(
                f"{self.host.url}: cannot upload a big value to {self._values_dir}: {exc}",
                host=self.host.url,
                reason="unreachable" if connection.ssh.is_closed() else "workdir",
            ) from exc
        finally:
            self._release(connection)

    async def _remote_value(self, connection: _Connection, path: str) -> str:
        """Return the remote path of the big value's file `path`, making the run's directory there first."""
        assert self._values is not None, "asyncflow bug: a value's remote path without the run's values"
        relative = self._values.relative(path)
        if not self._values_dir:
            directory = posixpath.join(self._jobs_dir, posixpath.dirname(relative))
            await connection.sftp.makedirs(directory, _PRIVATE_DIR, exist_ok=True)
            self._values_dir = directory
        return posixpath.join(self._jobs_dir, relative)

    async def _take_answer(self, connection: _Connection, remote: str, job: Path, label: str) -> None:
        """Download a big result the job at `remote` spilled on the host, beside local `job`.

        The host keeps it among the run's values, as the file `jobs.run_job` will keep
        here: its readers there need no upload.
        """
        try:
            answer = await anyio.to_thread.run_sync(payload.read_answer, job)
        except Exception:  # an answer this process cannot read: `run_job` says so
            return
        if answer is None or not answer.spilled:
            return
        local = payload.answer_path(job)
        spilled = remote + ".answer.pkl"
        try:
            async with connection.sftp.open(spilled, "rb", encoding=None) as f:
                data: bytes = await f.read()  # bytes: opened with encoding=None
            await anyio.to_thread.run_sync(
                partial(blobs.write_atomic, local, local.parent, data, private=True)
            )
        except BaseException as exc:
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True), suppress(OSError, asyncssh.Error):
                await connection.sftp.remove(spilled)
            if isinstance(exc, (OSError, asyncssh.Error)):
                raise HostError(
                    f"{self.host.url}: cannot download the big result of {label} ({spilled}): {exc}",
                    host=self.host.url,
                    reason="unreachable" if connection.ssh.is_closed() else "workdir",
                ) from exc
            raise
        if self._values is not None:
            kept = self._values.kept_path(str(local))
            with suppress(OSError, asyncssh.Error):  # else it is uploaded again if read there
                await connection.sftp.rename(spilled, await self._remote_value(connection, kept))
                self._shipped[kept] = event = anyio.Event()
                event.set()

    # Connections.

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _acquire(self) -> _Connection:
        """Take a job slot on a connection, opening one if all are busy and the cap allows."""
        while True:
            # A connection the server closed goes once its last job has seen that.
            self._connections = [c for c in self._connections if c.busy or not c.ssh.is_closed()]
            for connection in self._connections:
                if connection.busy < connection.capacity and not connection.ssh.is_closed():
                    connection.busy += 1
                    return connection
            if not self._opening and len(self._connections) < self._limit:
                self._opening = True
                try:
                    connection = await self._open()
                except HostError as exc:
                    if not self._connections:
                        self._failure = exc
                        self._failures += 1
                        raise
                    # The host takes no more connections now: queue on those it took.
                    self._limit = len(self._connections)
                    continue
                finally:
                    self._opening = False
                    self._notify()
                connection.busy += 1
                self._connections.append(connection)
                return connection
            failures, changed = self._failures, self._changed
            await changed.wait()
            failure = self._failure
            if self._failures > failures and failure is not None and not self._connections:
                # Fail with the attempt this job waited on, rather than each retrying in turn.
                raise HostError(str(failure), host=failure.host, reason=failure.reason) from failure

    async def _open(self) -> _Connection:
        host = self.host
        known_hosts, key_file = _local_files(host)
        try:
            with anyio.fail_after(host.connect_timeout):
                # () is asyncssh's "default" (the local user name; ~/.ssh keys and the agent),
                # where None would mean "none".
                ssh = await asyncssh.connect(
                    host.host,
                    host.port,
                    username=() if host.user is None else host.user,
                    client_keys=() if key_file is None else [key_file],
                    known_hosts=known_hosts,
                )
        except (OSError, asyncssh.Error, ValueError) as exc:
            raise _connect_error(host, exc, known_hosts) from exc
        try:
            sftp = await ssh.start_sftp_client()
            if not self._jobs_dir:
                self._jobs_dir = await self._make_jobs_dir(sftp)
        except BaseException as exc:
            ssh.close()
            if isinstance(exc, (OSError, asyncssh.Error)):
                raise HostError(
                    f"{host.url}: cannot use SFTP, or create the job directory "
                    f"{host.workdir or '~/' + DEFAULT_WORKDIR!r} there: {exc}; check the server's "
                    "`Subsystem sftp` line, or pass Host(workdir=...) a writable directory",
                    host=host.url,
                    reason="workdir",
                ) from exc
            raise
        return _Connection(ssh, sftp, self._capacity)

    async def _make_jobs_dir(self, sftp: asyncssh.SFTPClient) -> str:
        workdir = self.host.workdir or DEFAULT_WORKDIR
        if workdir.startswith("~/"):
            workdir = workdir[2:]
        if not posixpath.isabs(workdir):
            workdir = posixpath.join(await sftp.realpath("."), workdir)
        await sftp.makedirs(workdir, _PRIVATE_DIR, exist_ok=True)
        return workdir

    # Jobs.

    async def _run_on(self, connection: _Connection, job: Path, label: str, tail: deque[str]) -> JobEnd:
        remote = posixpath.join(self._jobs_dir, job.name)
        sftp = connection.sftp
        await sftp.mkdir(remote, _PRIVATE_DIR)
        try:
            for name in (payload.SYS_PATH, payload.PAYLOAD):
                await _upload(sftp, job / name, posixpath.join(remote, name))
            command = self.host.worker_command(remote)
            try:
                process = await connection.ssh.create_process(command, encoding=None)
            except asyncssh.ChannelOpenError as exc:
                raise _SessionRefused(exc.reason) from exc
            returncode = await _watch(process, label, tail)
            with suppress(asyncssh.SFTPNoSuchFile):  # no answer: the exit status and stderr tell why
                await _download(sftp, posixpath.join(remote, payload.RESULT), job)
                await self._take_answer(connection, remote, job, label)
        finally:
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await _remove_job(sftp, remote)
        return JobEnd(self.host.ssh_command(command), returncode)


async def _remove_job(sftp: asyncssh.SFTPClient, remote: str) -> None:
    """Remove the job directory `remote` from the host, and a big answer beside it that nobody took."""
    # Suppressed: when the connection is gone, nothing more can be done from here.
    with suppress(OSError, asyncssh.Error):
        await sftp.rmtree(remote, ignore_errors=True)  # pyright: ignore[reportUnknownMemberType]  # its onerror callback is untyped
    with suppress(OSError, asyncssh.Error):
        await sftp.remove(remote + ".answer.pkl")


async def _upload(sftp: asyncssh.SFTPClient, local: Path, remote: str) -> None:
    """Copy a job file to the host, the owner's only from its creation (a payload may hold secrets)."""
    data = await anyio.Path(local).read_bytes()
    async with sftp.open(remote, "wb", _PRIVATE_FILE, encoding=None) as f:
        await f.write(data)


async def _download(sftp: asyncssh.SFTPClient, remote: str, job: Path) -> None:
    """Copy the worker's answer from the host into local job directory `job`, the owner's only."""
    async with sftp.open(remote, "rb", encoding=None) as f:
        data: bytes = await f.read()  # bytes: opened with encoding=None
    await anyio.to_thread.run_sync(payload.write_file, job, payload.RESULT, data)


async def _watch(process: asyncssh.SSHClientProcess[bytes], label: str, tail: deque[str]) -> int:
    """Relay the job's output until it exits; end it if cancelled. Returns its exit status."""
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay, _Reader(process.stdout), sys.stdout, label, None)
            tg.start_soon(relay, _Reader(process.stderr), sys.stderr, label, tail)
        await process.wait_closed()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _stop(process)
        raise
    returncode = process.returncode
    if returncode is None:
        raise ConnectionError("the channel closed without an exit status")
    return returncode


async def _stop(process: asyncssh.SSHClientProcess[bytes]) -> None:
    """End a remote worker: close its stdin (it runs with ``--exit-on-stdin-eof``), then the channel.

    Signals would not do: sshd refuses them for root logins, and closing the channel
    alone leaves a command without a pty running.
    """
    try:
        process.stdin.write_eof()
        with anyio.move_on_after(STOP_GRACE):
            await process.wait_closed()
    except (OSError, asyncssh.Error):
        pass  # already gone, or the connection is: then sshd closes the stdin itself
    finally:
        process.close()


class _RemoteWorker(Worker):
    """A warm worker on the host: its channel's stdin and stdout carry the protocol."""

    def __init__(
        self,
        index: int,
        pool: Pool,
        connection: _Connection,
        process: asyncssh.SSHClientProcess[bytes],
        command: str,
    ) -> None:
        super().__init__(
            index, pool.host.ssh_command(command), _Reader(process.stdout), _Reader(process.stderr)
        )
        self._pool = pool
        self._connection: _Connection | None = connection  # None once its session is given back
        self._process = process

    async def run(self, job: Path, label: str, tail: deque[str]) -> int:
        # The job's files travel with the call and its answer: SFTP would take a few round trips more.
        remote = posixpath.join(self._pool._jobs_dir, job.name)  # pyright: ignore[reportPrivateUsage]  # its pool's
        files = await anyio.to_thread.run_sync(
            lambda: [(job / name).read_bytes() for name in (payload.SYS_PATH, payload.PAYLOAD)]
        )
        try:
            status, answer = await self.exchange(remote, label, tail, files)
        except BaseException:
            # The worker removes the job directory after the body; a body it never finished leaves it.
            connection = self._connection
            if connection is not None and not connection.ssh.is_closed():
                with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                    with suppress(OSError, asyncssh.Error):
                        await self.stop()  # first: it may still write there
                    await _remove_job(connection.sftp, remote)
            raise
        if answer:
            await anyio.to_thread.run_sync(payload.write_file, job, payload.RESULT, answer)
            connection = self._connection
            assert connection is not None, "asyncflow bug: a worker answered without its session"
            await self._pool._take_answer(connection, remote, job, label)  # pyright: ignore[reportPrivateUsage]  # its pool's
        return status

    def alive(self) -> bool:
        connection = self._connection
        return (
            connection is not None
            and not connection.ssh.is_closed()
            and self._process.returncode is None
            and not self._process.is_closing()
        )

    async def send(self, data: bytes) -> None:
        self._process.stdin.write(data)
        await self._process.stdin.drain()

    async def wait_end(self) -> tuple[int, str]:
        with anyio.move_on_after(STOP_GRACE):
            await self._process.wait_closed()
        connection = self._connection
        if connection is not None and connection.ssh.is_closed():
            return -1, f"the connection to {self._pool.host.url} was lost"
        returncode = self._process.returncode
        signal = self._process.exit_signal
        if signal is not None:
            return -1 if returncode is None else returncode, f"it was killed by SIG{signal[0]}"
        if returncode is None:
            return -1, "its channel closed without an exit status"
        return returncode, f"it exited with status {returncode}"

    async def stop(self) -> None:
        await _stop(self._process)
        self._give_back()

    async def close(self) -> None:
        await self.stop()  # its stdin closed, an idle worker exits at once

    def _give_back(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection)  # pyright: ignore[reportPrivateUsage]  # its pool's


class _Reader(ByteReceiveStream):
    """An asyncssh reader seen as an anyio byte stream, so `jobs.relay` can read it."""

    def __init__(self, reader: asyncssh.SSHReader[bytes]) -> None:
        self._reader = reader

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._reader.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        return None


def _local_files(host: Host) -> tuple[str | None, str | None]:
    """Return the known_hosts and key files to use, ``~`` expanded; None where unset."""
    key_file = None if host.key_file is None else os.path.expanduser(host.key_file)
    if host.known_hosts is None:
        return None, key_file
    known_hosts = os.path.expanduser(host.known_hosts)
    if not os.path.exists(known_hosts):
        raise HostError(
            f"{host.url}: cannot check the host key: the known_hosts file {known_hosts} does not "
            f"exist; after checking the key's fingerprint, add it with `{_keyscan(host)} >> "
            f"{host.known_hosts}`, or pass Host(known_hosts=...) another file",
            host=host.url,
            reason="host-key",
        )
    return known_hosts, key_file


def _keyscan(host: Host) -> str:
    port = "" if host.port == 22 else f"-p {host.port} "
    return f"ssh-keyscan {port}{shlex.quote(host.host)}"


def _connect_error(host: Host, exc: BaseException, known_hosts: str | None) -> HostError:
    """Say why connecting to `host` failed, and what to do about it."""
    where = f"{host.url}:"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        entry = host.host if host.port == 22 else f"[{host.host}]:{host.port}"
        message = (
            f"{where} the host key is not trusted: it is missing from {known_hosts}, or differs "
            f"from the key recorded there ({exc.reason}); if the host is new, check its fingerprint "
            f"and add it with `{_keyscan(host)} >> {known_hosts}`; if its key changed, find out why "
            f"before replacing it (`ssh-keygen -R '{entry}' -f {known_hosts}`)"
        )
        reason = "host-key"
    elif isinstance(exc, asyncssh.PermissionDenied):
        key = "the default keys and agent" if host.key_file is None else f"the key {host.key_file}"
        message = (
            f"{where} authentication failed for user {host.user or '(local user name)'} with {key}; "
            "add the public key to the remote ~/.ssh/authorized_keys, or pass Host(key_file=..., "
            "user=...)"
        )
        reason = "auth"
    elif isinstance(exc, (asyncssh.KeyImportError, FileNotFoundError)):
        message = f"{where} cannot read the client key {host.key_file}: {exc}; pass Host(key_file=...) a readable, unencrypted private key"
        reason = "auth"
    elif isinstance(exc, ConnectionRefusedError):
        message = (
            f"{where} connection refused: nothing listens on port {host.port} of {host.host}; check "
            "the host name and port, and that sshd runs there"
        )
        reason = "refused"
    elif isinstance(exc, socket.gaierror):
        message = f"{where} unknown host name {host.host!r} ({exc.strerror}); check the spelling, or use its address"
        reason = "unreachable"
    elif isinstance(exc, TimeoutError):
        message = (
            f"{where} no answer within {host.connect_timeout:g} s; check that the host is up and "
            "reachable from here, or raise Host(connect_timeout=...)"
        )
        reason = "unreachable"
    else:
        message = f"{where} cannot connect: {type(exc).__name__}: {exc}"
        reason = "unreachable"
    return HostError(message, host=host.url, reason=reason)
