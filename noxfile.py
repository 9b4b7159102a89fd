"""Sessions: `nox` runs lint, typecheck and tests (what .ci/run runs); `nox -s bench` times."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"
# Tests run on every supported Python found; one that is missing is skipped (3.11 is
# what the machine runs), also under CI=true, where nox would otherwise fail.
nox.options.error_on_missing_interpreters = False

PYTHON = "3.11"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """pyright strict on asyncflow/, then --verifytypes on the public API (100%)."""
    # exceptiongroup: pyright checks the Python 3.10 branch of _errors.py too.
    # dask and ray: their runners import them (pyright reads their types).
    session.install(
        "-e", ".[web,dask,ray]", "pyright>=1.1.390", "pytest>=8", "trio>=0.27", "nox", "exceptiongroup"
    )  # fmt: skip
    session.run("pyright")
    session.run("pyright", "--verifytypes", "asyncflow", "--ignoreexternal")


@nox.session(python=["3.10", PYTHON])
def tests(session: nox.Session) -> None:
    """pytest on asyncio and trio; extra arguments go to pytest."""
    session.install(
        "-e",
        ".[web]",
        "pytest>=8",
        "trio>=0.27",
        "fastapi",
        "uvicorn",
        "httpx",
        # The web view's tests drive Debian's chromium (.ci/run installs it) with it.
        "playwright",
        "nbclient",
        "nbformat",
        "ipykernel",
        # Optional: keys of numpy and pandas values (tests skip without them).
        "numpy",
        "pandas",
        # The engines the Dask runner's tests start (a LocalCluster).
        "dask[distributed]",
    )
    if session.python == PYTHON:  # Ray is heavy: its tests run on one Python (they skip on others)
        session.install("ray")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Time the workloads cold and warm on asyncflow, the floors and the peers; print a table.

    Each peer (Parsl, Prefect, Dask, taskproc) gets a virtualenv of its own, which
    benchmarks/run.py builds from the base interpreter (not this session's) under
    ~/.cache/asyncflow-bench/venvs and reuses; ``nox -s bench -- --no-peers`` skips them.
    """
    session.install("-e", ".", "trio>=0.27")
    session.run("python", "benchmarks/run.py", *session.posargs)
