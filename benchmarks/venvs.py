"""The peers' virtualenvs: one per peer, built from ``peers/<peer>.txt`` and reused.

`prepare_peer` finds a peer's venv under ``--venvs`` (named by a hash of its
requirements and the Python version) or builds it from the base interpreter, and says
how to run the peer's script (`PeerSetup`), or why it cannot run.
"""

from __future__ import annotations

import hashlib
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent / "peers"
VENVS_DIR = Path("~/.cache/asyncflow-bench/venvs")


@dataclass
class PeerSetup:
    """A peer ready to run (`python`, `script`), or why it cannot (`problem`)."""

    python: Path | None = None
    script: Path | None = None
    venv: Path | None = None
    problem: str | None = None


READY = "asyncflow-bench-ready"  # written last into a complete venv: `pip freeze`


def base_python() -> str:
    """The interpreter this one was made from: inside a venv (nox's), the one under it."""
    return getattr(sys, "_base_executable", None) or sys.executable


def venv_path(peer: str, requirements: Path, venvs: Path) -> Path:
    """``<venvs>/<peer>-<hash of the requirements and the Python version>``."""
    digest = hashlib.sha256(requirements.read_bytes() + platform.python_version().encode())
    return venvs / f"{peer}-{digest.hexdigest()[:10]}"


def pip_problem(log: str) -> str:
    """The first line of a failed ``pip install`` that says why, made short."""
    missing = re.search(r"satisfies the requirement ([\w.\-\[\]]+)==(\S+) \(from versions:", log)
    if missing:
        return f"{missing.group(1)} {missing.group(2)} is not on PyPI"
    errors = [line for line in log.splitlines() if line.startswith("ERROR:")]
    lines = errors or [line for line in log.splitlines() if line.strip()] or ["pip failed"]
    return lines[0].removeprefix("ERROR:").strip()[:160]


def pip_install(python: str, requirements: Path, log_path: Path) -> tuple[int, str]:
    """``pip install -r`` into `python`'s venv, showing what it collects; exit status and log."""
    argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "-r", str(requirements)]
    lines: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(("Collecting", "Successfully installed", "ERROR")):
                print(f"    {line.rstrip()[:150]}", file=sys.stderr)
    log = "".join(lines)
    log_path.write_text(log)
    return proc.returncode, log


def build_venv(venv: Path, requirements: Path) -> str | None:
    """Make `venv` afresh and install `requirements` into it; None, or what went wrong."""
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        [base_python(), "-m", "venv", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        return f"python -m venv failed: {(made.stderr.strip().splitlines() or ['?'])[-1]}"
    python = str(venv / "bin" / "python")
    code, log = pip_install(python, requirements, venv / "pip-install.log")
    if code != 0:
        return pip_problem(log)
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=False)
    (venv / READY).write_text(freeze.stdout)
    return None


def prepare_peer(peer: str, peers_dir: Path, venvs: Path) -> PeerSetup:
    """Find or build `peer`'s venv; then its script must exist."""
    requirements = peers_dir / f"{peer}.txt"
    if not requirements.exists():
        return PeerSetup(problem=f"not installable: no requirements file peers/{requirements.name}")
    venv = venv_path(peer, requirements, venvs)
    if (venv / READY).exists() and (venv / "bin" / "python").exists():
        print(f"venv {peer}: {venv} (reused)", file=sys.stderr)
    else:
        print(f"venv {peer}: building {venv} (pip install -r {requirements}) ...", file=sys.stderr)
        t0 = time.perf_counter()
        problem = build_venv(venv, requirements)
        if problem:
            print(f"  ! {peer} not installable: {problem} (log: {venv}/pip-install.log)", file=sys.stderr)
            return PeerSetup(venv=venv, problem=f"not installable: {problem}")
        print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    script = peers_dir / f"{peer}_peer.py"
    if not script.exists():
        return PeerSetup(venv=venv, problem=f"no adapter: no peers/{script.name}")
    return PeerSetup(python=venv / "bin" / "python", script=script, venv=venv)
