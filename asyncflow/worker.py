"""``python -m asyncflow.worker JOB_DIR``: run one task body for a parent run.

A job prefix (``srun``, ``bsub -K``, ``docker run``, ``ssh host``) starts this command
wherever it places jobs; the parent wrote the payload to ``JOB_DIR`` and reads the answer
from it. The worker never opens the cache's SQLite index. Exit status: 0 when the body
returned, 1 when it raised (the answer holds the exception), 2 when the payload could
not be read.

``--exit-on-stdin-eof`` (what SSH hosts pass): exit at once, with status 129, when stdin
reaches its end. Closing an SSH channel does not stop a command that runs without a
pty, and sshd refuses signals for root logins; but it does close the command's stdin,
so this is how cancelling a remote job ends the worker. A daemon thread waits on stdin;
the body still runs in the main thread.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import traceback
from dataclasses import replace
from pathlib import Path

import anyio

from ._runners import payload
from ._runners.base import pickle_result
from ._sync import BODY, ELSEWHERE

USAGE = "usage: python -m asyncflow.worker [--exit-on-stdin-eof] JOB_DIR"
HANGUP = 129  # exit status when stdin ends first (128 + SIGHUP, as a hung-up terminal gives)


def exit_on_stdin_eof() -> None:
    """Start a daemon thread that ends this process as soon as stdin reaches its end."""

    def watch() -> None:
        try:
            while os.read(0, 65536):  # the fd, not sys.stdin: no buffering, no None
                pass
        except OSError:  # no stdin at all: nothing holds this job open either
            pass
        os._exit(HANGUP)  # no cleanup: the body must not outlive the cancelled job

    threading.Thread(target=watch, name="asyncflow-stdin-eof", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Run the job whose directory `argv` names (default: this process's arguments)."""
    args = list(sys.argv if argv is None else argv)[1:]
    watch_stdin = "--exit-on-stdin-eof" in args
    if watch_stdin:
        args.remove("--exit-on-stdin-eof")
    if len(args) != 1 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)  # noqa: T201
        return 2
    if watch_stdin:
        exit_on_stdin_eof()
    job = Path(args[0])
    try:
        task = payload.read_payload(job)
    except Exception:
        traceback.print_exc()
        print(f"asyncflow.worker: cannot read the payload in {job}", file=sys.stderr)  # noqa: T201
        return 2
    BODY.set(ELSEWHERE)  # a task the body runs cannot join the run (see `Task.run`)
    try:
        value = anyio.run(task.run_task) if inspect.iscoroutinefunction(task.run_task) else task.run_task()
        pickled = pickle_result(value)
    except BaseException as exc:  # reported to the parent, whatever it is
        traceback.print_exc()
        payload.write_answer(job, replace(payload.failure(exc), job=whoami()))
        return 1
    payload.write_answer(job, payload.Answer(pickled, job=whoami()))
    return 0


def whoami() -> str:
    """Name this job for the parent's history: its Slurm job id under Slurm, else this process's pid."""
    slurm = os.environ.get("SLURM_JOB_ID")
    return f"job {slurm}" if slurm else f"pid {os.getpid()}"


if __name__ == "__main__":
    sys.exit(main())
