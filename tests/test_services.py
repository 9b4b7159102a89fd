"""The test services themselves: a real Slurm cluster and a real OpenSSH server on 127.0.0.1.

Skipped when they are not up (see tests/service_env.py for how to start them).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .service_env import need_slurm, need_sshd, requires_slurm, requires_sshd


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        env=os.environ | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _ssh_command(env: dict[str, str], known_hosts: str) -> list[str]:
    return [
        "ssh",
        "-p",
        env["ASYNCFLOW_SSH_PORT"],
        "-i",
        env["ASYNCFLOW_SSH_KEY"],
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-F",
        "/dev/null",
        f"{env['ASYNCFLOW_SSH_USER']}@{env['ASYNCFLOW_SSH_HOST']}",
    ]


@pytest.mark.slurm
@requires_slurm
def test_srun_python() -> None:
    env = need_slurm()
    done = _run(["srun", "-Q", "-p", env["ASYNCFLOW_SLURM_PARTITION"], "python3", "-c", "print(1)"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1\n"


@pytest.mark.slurm
@requires_slurm
def test_srun_exit_status() -> None:
    env = need_slurm()
    done = _run(["srun", "-Q", "-p", env["ASYNCFLOW_SLURM_PARTITION"], "sh", "-c", "exit 3"], env)
    assert done.returncode == 3


@pytest.mark.slurm
@requires_slurm
def test_sbatch_wait(tmp_path: Path) -> None:
    env = need_slurm()
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/sh\necho "job $SLURM_JOB_ID on $SLURMD_NODENAME"\n')
    out = tmp_path / "job.out"
    done = _run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            "-p",
            env["ASYNCFLOW_SLURM_PARTITION"],
            "-o",
            str(out),
            str(script),
        ],
        env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    assert job_id.isdigit()
    assert out.read_text().startswith(f"job {job_id} on node")


@pytest.mark.ssh
@requires_sshd
def test_ssh_with_client_key() -> None:
    env = need_sshd()
    done = _run([*_ssh_command(env, env["ASYNCFLOW_SSH_KNOWN_HOSTS"]), "true"], env)
    assert done.returncode == 0, done.stderr
    config = _run(["ssh", "-F", env["ASYNCFLOW_SSH_CONFIG"], "asyncflow-sshd", "echo ok"], env)
    assert (config.returncode, config.stdout) == (0, "ok\n"), config.stderr


@pytest.mark.ssh
@requires_sshd
def test_ssh_refuses_wrong_host_key(tmp_path: Path) -> None:
    env = need_sshd()
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{env['ASYNCFLOW_SSH_HOST']}]:{env['ASYNCFLOW_SSH_PORT']} {key}\n")
    done = _run([*_ssh_command(env, str(known_hosts)), "true"], env)
    assert done.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stderr
