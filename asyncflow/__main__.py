"""``python -m asyncflow``: the command line (see `asyncflow._cli`)."""

from __future__ import annotations

import sys

# Absolute: worker processes (executor="process") re-import this file by path, as __mp_main__.
from asyncflow._cli import main

if __name__ == "__main__":
    sys.exit(main())
