"""The real services some tests run against: a Slurm cluster and an OpenSSH server.

Both run on 127.0.0.1 and are started outside pytest by the project's own scripts
(as root; they install Debian's packages with apt-get when missing)::

    bash tests/services/slurm-up.sh   # state in /tmp/asyncflow-test-slurm
    bash tests/services/sshd-up.sh    # state in /tmp/asyncflow-test-sshd, port 2222
    ...
    bash tests/services/slurm-down.sh; bash tests/services/sshd-down.sh

Each `-up` script prints `export` lines and writes them to `STATE_DIR/env.sh`.
`slurm_env()` / `sshd_env()` return those variables when the service answers, else
None; `requires_slurm` / `requires_sshd` skip a test then (`.ci/run` sets
ASYNCFLOW_REQUIRE_SERVICES=1, which makes them fail instead). Give a test the
`slurm` / `ssh` marker too, so `-m "not slurm"` deselects it::

    @pytest.mark.slurm
    @requires_slurm
    def test_x() -> None:
        env = slurm_env()
        assert env is not None
        subprocess.run(["srun", "-p", env["ASYNCFLOW_SLURM_PARTITION"], ...], env=os.environ | env)

Slurm: SLURM_CONF, ASYNCFLOW_SLURM_DIR, ASYNCFLOW_SLURM_PARTITION, ASYNCFLOW_SLURM_NODES,
ASYNCFLOW_SLURM_MUNGE_SOCKET. OpenSSH: ASYNCFLOW_SSHD_DIR, ASYNCFLOW_SSH_HOST,
ASYNCFLOW_SSH_PORT, ASYNCFLOW_SSH_USER, ASYNCFLOW_SSH_KEY (client private key),
ASYNCFLOW_SSH_KNOWN_HOSTS, ASYNCFLOW_SSH_CONFIG (`Host asyncflow-sshd`), ASYNCFLOW_SSH_URL.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

SERVICES_DIR = Path(__file__).resolve().parent / "services"
SLURM_DIR_DEFAULT = "/tmp/asyncflow-test-slurm"
SSHD_DIR_DEFAULT = "/tmp/asyncflow-test-sshd"
SLURM_KEYS = ("SLURM_CONF", "ASYNCFLOW_SLURM_DIR", "ASYNCFLOW_SLURM_PARTITION")
SSHD_KEYS = (
    "ASYNCFLOW_SSH_HOST",
    "ASYNCFLOW_SSH_PORT",
    "ASYNCFLOW_SSH_USER",
    "ASYNCFLOW_SSH_KEY",
    "ASYNCFLOW_SSH_KNOWN_HOSTS",
)
# Under CI the services must be there: a missing one fails its tests instead of skipping them.
REQUIRED = os.environ.get("ASYNCFLOW_REQUIRE_SERVICES", "") == "1"


def read_env_file(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines of an env.sh written by an `-up` script."""
    env: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return env
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def _service_env(
    dir_var: str, default_dir: str, prefixes: tuple[str, ...], keys: tuple[str, ...]
) -> dict[str, str] | None:
    """DIR/env.sh if there is one, else the matching variables of this process."""
    env = read_env_file(Path(os.environ.get(dir_var, default_dir)) / "env.sh")
    if not env:
        env = {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
    return env if all(env.get(k) for k in keys) else None


def _pid_alive(pid_file: Path, comm: str) -> bool | None:
    """True/False when pid_file names a live `comm` process or not; None without the file."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return name == comm and stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@functools.cache
def slurm_env() -> dict[str, str] | None:
    """The Slurm cluster's variables when `sinfo` answers for it, else None (cached)."""
    env = _service_env(
        "ASYNCFLOW_SLURM_DIR", SLURM_DIR_DEFAULT, ("ASYNCFLOW_SLURM_", "SLURM_CONF"), SLURM_KEYS
    )
    if env is None or shutil.which("sinfo") is None:
        return None
    if _pid_alive(Path(env["ASYNCFLOW_SLURM_DIR"]) / "run" / "slurmctld.pid", "slurmctld") is False:
        return None  # a dead controller: sinfo would spend seconds retrying
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-p", env["ASYNCFLOW_SLURM_PARTITION"], "-o", "%a %D"],
            env=os.environ | env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return env if done.returncode == 0 and done.stdout.startswith("up ") else None


@functools.cache
def sshd_env() -> dict[str, str] | None:
    """The OpenSSH server's variables when it sends its banner, else None (cached)."""
    env = _service_env(
        "ASYNCFLOW_SSHD_DIR", SSHD_DIR_DEFAULT, ("ASYNCFLOW_SSH_", "ASYNCFLOW_SSHD_"), SSHD_KEYS
    )
    if env is None:
        return None
    if (
        "ASYNCFLOW_SSHD_DIR" in env
        and _pid_alive(Path(env["ASYNCFLOW_SSHD_DIR"]) / "sshd.pid", "sshd") is False
    ):
        return None
    try:
        with socket.create_connection(
            (env["ASYNCFLOW_SSH_HOST"], int(env["ASYNCFLOW_SSH_PORT"])), timeout=5
        ) as s:
            banner = s.recv(64)
    except (OSError, ValueError):
        return None
    return env if banner.startswith(b"SSH-2.0-") else None


requires_slurm = pytest.mark.skipif(
    not REQUIRED and slurm_env() is None,
    reason="no Slurm cluster: start one with `bash tests/services/slurm-up.sh` (as root)",
)
requires_sshd = pytest.mark.skipif(
    not REQUIRED and sshd_env() is None,
    reason="no sshd: start one with `bash tests/services/sshd-up.sh` (as root)",
)


def need_slurm() -> dict[str, str]:
    """slurm_env(), or fail the test (ASYNCFLOW_REQUIRE_SERVICES=1 lets it get here)."""
    env = slurm_env()
    if env is None:
        pytest.fail("the Slurm cluster is not up: bash tests/services/slurm-up.sh")
    return env


def need_sshd() -> dict[str, str]:
    """sshd_env(), or fail the test (ASYNCFLOW_REQUIRE_SERVICES=1 lets it get here)."""
    env = sshd_env()
    if env is None:
        pytest.fail("the sshd is not up: bash tests/services/sshd-up.sh")
    return env
