"""Writing a file so that a reader, or a crash, sees all of it or nothing. Imports nothing heavy (os, contextlib).

Shared by the cache's results (`_cache/blobs.py`) and a job's files (`_runners/payload.py`),
which a job's worker writes too: this costs it no import.
"""

from __future__ import annotations

import contextlib
import os


def write_atomic(path: str, tmp_dir: str, data: bytes, mode: int) -> None:
    """Write `data` to the file `path` through a new temporary file in `tmp_dir`, then rename it.

    The file is created with `mode`, whatever the umask (which may take bits away, never
    add them). When writing fails (a full disk), the partial temporary file is removed.
    Both directories exist already.
    """
    # NAME.RANDOM.PID.tmp: `asyncflow check` tells a dead writer's from its pid.
    tmp = os.path.join(tmp_dir, f"{os.path.basename(path)}.{os.urandom(4).hex()}.{os.getpid()}.tmp")
    # O_EXCL: a new file, so it has the mode given here and nothing else.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
