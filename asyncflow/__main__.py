"""``python -m asyncflow``: the command line (see `asyncflow._cli`)."""

from __future__ import annotations

import sys

# Absolute: a process started by multiprocessing's spawn re-imports this file by path, as
# __mp_main__, where a relative import fails.
from asyncflow._cli import main

if __name__ == "__main__":
    sys.exit(main())
