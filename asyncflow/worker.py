"""``python -m asyncflow.worker JOB_DIR``: run one task body for a parent run.

A job prefix (``srun``, ``bsub -K``, ``docker run``, ``ssh host``) starts this command
wherever it places jobs; the parent wrote the payload to ``JOB_DIR`` and reads the answer
from it (a big result beside it, `payload.answer_path`). The worker never opens the
cache's SQLite index. Exit status: 0 when the body returned, 1 when it raised (the
answer holds the exception), 2 when the payload could not be read.

``--exit-on-stdin-eof`` (what SSH hosts pass): exit at once, with status 129, when stdin
reaches its end. Closing an SSH channel does not stop a command that runs without a
pty, and sshd refuses signals for root logins; but it does close the command's stdin,
so this is how cancelling a remote job ends the worker. A daemon thread waits on stdin;
the body still runs in the main thread.

``--serve N`` (what warm pools start, `_runners/warm.py`): stay up as worker N of a pool,
taking many jobs one after another. The protocol is lines on stdin and stdout: the
worker first says ``ready <who>`` (``job 1234, worker 2``; ``pid 4321, worker 2``), then
for each job directory it reads it runs that job, writes its answer there and replies
``done <status>`` (the exit status the job would have had). What a body prints and logs
goes into its answer (stdout carries the protocol, so the body's stdout goes to stderr
as well). When stdin ends, the worker exits: at once, with status 129, if a body runs
(the run was cancelled), else with 0 (the run is over).

A job pays for what this process imports before its body runs, so a job's worker
imports asyncflow, the payload's helpers and the body's modules: anyio only for an
``async def`` body, cloudpickle only for a payload or a result that needs it (a class
that travels by value, a result other than a number, text or bytes), traceback only
when the body fails; the threads, queues and captures of the options above only with
those options.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ._runners import payload
from ._runners.base import call_and_pickle
from ._sync import BODY, ELSEWHERE

if TYPE_CHECKING:
    import queue
    import threading

    from ._capture import Capture

USAGE = "usage: python -m asyncflow.worker [--exit-on-stdin-eof] JOB_DIR | --serve N"
HANGUP = 129  # exit status when stdin ends first (128 + SIGHUP, as a hung-up terminal gives)


def exit_on_stdin_eof() -> None:
    """Start a daemon thread that ends this process as soon as stdin reaches its end."""
    import threading

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
    if len(args) == 2 and args[0] == "--serve" and args[1].isdigit():
        return _serve(int(args[1]))
    watch_stdin = "--exit-on-stdin-eof" in args
    if watch_stdin:
        args.remove("--exit-on-stdin-eof")
    if len(args) != 1 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)  # noqa: T201
        return 2
    if watch_stdin:
        exit_on_stdin_eof()
    return _run_job(args[0], whoami())


def _run_job(job: str | os.PathLike[str], who: str, capture: Capture | None = None) -> int:
    """Run the job in directory `job` and write its answer; return the job's exit status.

    `who` names this worker in the answer; `capture`, if given, holds what the body
    printed and logged, and goes into the answer too.
    """
    try:
        task = payload.read_payload(job)
    except Exception:
        import traceback

        traceback.print_exc()
        print(f"asyncflow.worker: cannot read the payload in {job}", file=sys.stderr)  # noqa: T201
        return 2
    BODY.set(ELSEWHERE)  # a task the body runs cannot join the run (see `Task.run`)
    try:
        pickled = call_and_pickle(task).pickled
    except BaseException as exc:  # reported to the parent, whatever it is
        import traceback

        traceback.print_exc()
        output = "" if capture is None else capture.text()
        payload.write_answer(job, payload.failure(exc)._replace(job=who, output=output))
        return 1
    output = "" if capture is None else capture.text()
    answer = payload.spill(payload.Answer(pickled, job=who, output=output), payload.answer_file(job))
    payload.write_answer(job, answer)
    return 0


def _serve(index: int) -> int:
    """Serve jobs named on stdin, one at a time, as worker `index` of a warm pool (see the module doc)."""
    # Here: a job of its own spares these imports (the pools' subprocess and streams among them).
    import queue
    import shutil
    import threading

    from ._capture import CAPTURE, Capture, capturing
    from ._runners.warm import MARK

    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    calls = os.dup(0)
    # Only the protocol reads stdin: the body reads an empty one. What the body prints
    # (from Python or C) and this worker's stderr share stdout with the protocol's
    # lines, in order; each of those starts with MARK.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(1, 2)
    jobs: queue.SimpleQueue[tuple[str, list[bytes] | None]] = queue.SimpleQueue()
    busy = threading.Event()
    threading.Thread(
        target=_read_calls, args=(calls, jobs, busy), name="asyncflow-serve", daemon=True
    ).start()
    replies.write(f"{MARK}ready {whoami()}, worker {index}\n".encode())
    while True:
        job, files = jobs.get()
        if files is not None:  # inline: the files came with the call, and the answer goes back with the reply
            os.makedirs(job, mode=0o700, exist_ok=True)
            payload.write_file(job, payload.SYS_PATH, files[0])
            payload.write_file(job, payload.PAYLOAD, files[1])
        capture = Capture()
        token = CAPTURE.set(capture)
        try:
            with capturing():
                status = _run_job(job, f"{whoami()}, worker {index}", capture)
        finally:
            CAPTURE.reset(token)
        sys.stdout.flush()
        sys.stderr.flush()
        if files is None:
            reply = f"{MARK}done {status}\n".encode()
        else:
            try:
                with open(os.path.join(job, payload.RESULT), "rb") as f:
                    answer = f.read()
            except FileNotFoundError:
                answer = b""
            # Not `payload.remove`: a big answer beside the directory is the parent's to take.
            shutil.rmtree(job, ignore_errors=True)
            reply = f"{MARK}done {status} {len(answer)}\n".encode() + answer
        busy.clear()
        replies.write(reply)


def _read_calls(
    calls: int, jobs: queue.SimpleQueue[tuple[str, list[bytes] | None]], busy: threading.Event
) -> None:
    """Read calls from fd `calls` into `jobs` (a warm worker's stdin reader); exit at its end.

    A call is a job directory on a line, or ``inline DIR SIZE SIZE`` and then the
    contents of its ``sys_path`` and ``payload.pkl``.
    """
    pending = bytearray()  # appended in place: a big inline call arrives in many reads
    need = 0  # how many bytes `pending` must hold before the call it starts can be taken
    try:
        while data := os.read(calls, 1 << 20):
            pending += data
            if len(pending) < need:
                continue
            while (end := pending.find(b"\n")) >= 0:
                text = pending[:end].decode()
                files: list[bytes] | None = None
                if text.startswith("inline "):
                    text, first, second = text.removeprefix("inline ").rsplit(" ", 2)
                    ends = (end + 1 + int(first), end + 1 + int(first) + int(second))
                    if len(pending) < ends[1]:
                        need = ends[1]  # the rest of its files has yet to come
                        break
                    files = [bytes(pending[end + 1 : ends[0]]), bytes(pending[ends[0] : ends[1]])]
                    del pending[: ends[1]]
                else:
                    del pending[: end + 1]
                need = 0
                busy.set()  # before the main thread sees it: an EOF from now on cancels it
                jobs.put((text, files))
    except OSError:
        pass
    # No cleanup: a body running now was cancelled, and must not outlive its job.
    os._exit(HANGUP if busy.is_set() else 0)


def whoami() -> str:
    """Name this job for the parent's history: its Slurm job id under Slurm, else this process's pid."""
    slurm = os.environ.get("SLURM_JOB_ID")
    return f"job {slurm}" if slurm else f"pid {os.getpid()}"


if __name__ == "__main__":
    sys.exit(main())
