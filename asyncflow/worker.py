"""``python -m asyncflow.worker JOB_DIR``: run one task body for a parent run.

A job prefix (``srun``, ``bsub -K``, ``docker run``, ``ssh host``) starts this command
wherever it places jobs; the parent wrote the payload to ``JOB_DIR`` and reads the answer
from it. The worker never opens the cache's SQLite index. Exit status: 0 when the body
returned, 1 when it raised (the answer holds the exception), 2 when the payload could
not be read.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from pathlib import Path

import anyio

from ._cache import blobs
from ._runners import payload


def main(argv: list[str] | None = None) -> int:
    """Run the job in ``argv[1]`` (default: this process's arguments)."""
    args = sys.argv if argv is None else argv
    if len(args) != 2:
        print("usage: python -m asyncflow.worker JOB_DIR", file=sys.stderr)  # noqa: T201
        return 2
    job = Path(args[1])
    try:
        task = payload.read_payload(job)
    except Exception:
        traceback.print_exc()
        print(f"asyncflow.worker: cannot read the payload in {job}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        value = anyio.run(task.run_task) if inspect.iscoroutinefunction(task.run_task) else task.run_task()
        pickled = blobs.dumps(value)
    except BaseException as exc:  # reported to the parent, whatever it is
        traceback.print_exc()
        payload.write_answer(job, payload.failure(exc))
        return 1
    payload.write_answer(job, payload.Answer(pickled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
