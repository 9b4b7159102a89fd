"""Sections: the scripts beside the harness that print a table of their own, run after the main table.

Each is a script in this directory that runs standalone, prints its table (markdown) to
stdout and its progress to stderr, and exits 0: `bigvalue.py` (one big result read by
several tasks, per place), `places.py` (a trivial body's latency, per place),
`startup.py` (what starting costs). `SECTIONS` names them for ``--only`` and ``--skip``
and says which of the harness's options each takes; a section whose script is not
there is left out without a word, so a script can join the harness before it exists.
`run_section` runs one in a child process and returns its table, or why it has none.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from children import ChildError, run_table

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Section:
    """A script of this directory whose table the harness prints after its own."""

    name: str  # for --only and --skip
    script: str
    title: str
    quick: tuple[str, ...] = ()  # its arguments under --quick: smaller sizes
    repeat: bool = False  # it takes --repeat N
    backend: bool = False  # it takes --backend

    @property
    def path(self) -> Path:
        return HERE / self.script

    def exists(self) -> bool:
        return self.path.is_file()

    def argv(self, *, quick: bool, repeat: int, backend: str) -> list[str]:
        """The command that runs it, with the harness's options it takes."""
        argv = [sys.executable, str(self.path)]
        if quick:
            argv += self.quick
        if self.repeat:
            argv += ["--repeat", str(repeat)]
        if self.backend:
            argv += ["--backend", backend]
        return argv


SECTIONS = [
    Section(
        "bigvalue",
        "bigvalue.py",
        "One big result read by several tasks, per place (cold)",
        quick=("--mb", "50"),
        repeat=True,
        backend=True,
    ),
    Section(
        "places",
        "places.py",
        "A trivial body's latency, per place a body runs",
        quick=("--bodies", "10"),
        backend=True,
    ),
    # Its options are its own business until it says otherwise: it runs with its defaults.
    Section(
        "startup", "startup.py", "What starting costs: import, asyncflow --help, a body through a prefix"
    ),
]
SECTION_NAMES = [s.name for s in SECTIONS]


def run_section(section: Section, argv: list[str], timeout: float) -> tuple[str, float]:
    """Run `section` as `argv`; return its table (or a line saying why there is none) and its seconds."""
    print(f"{section.name} ...", file=sys.stderr)
    started = time.perf_counter()
    try:
        table = run_table(argv, section.name, timeout=timeout)
    except ChildError as exc:
        print(f"{section.name}: {exc.reason}", file=sys.stderr)  # its stderr is shown already
        table = f"failed: {exc.reason}"
    return table, time.perf_counter() - started


def command_line(argv: list[str]) -> str:
    """`argv` as a user would type it from the repository's root, for the section's heading."""
    script = Path(argv[1])
    return " ".join(["python", f"{HERE.name}/{script.name}", *argv[2:]])
