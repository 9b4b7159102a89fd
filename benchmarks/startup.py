"""Start-up costs: `import asyncflow`, `asyncflow --help`, and a trivial body through a job prefix.

    python benchmarks/startup.py [--quick] [--repeat N] [--bodies N] [--baseline PATH]

Every figure comes from fresh processes started from a temporary directory with
``PYTHONPATH`` set to a checkout (from inside a checkout, ``python -c`` would put the
current directory first and import whatever lives there). The checkout measured is the
one holding this script; ``--baseline PATH`` adds another, measured in the same rounds,
alternating which goes first, and shown side by side. The processes write and reuse
bytecode in a temporary ``PYTHONPYCACHEPREFIX``, as an installed package has its
``.pyc`` files (``PYTHONDONTWRITEBYTECODE`` would have every import compile its sources),
and never write into the checkouts. One unmeasured round fills that cache first.

- ``import asyncflow``: the import statement timed inside the process, and the wall time
  of ``python -c "import asyncflow"`` (next to ``python -c pass`` and ``import anyio``).
- ``asyncflow --help``: the wall time of the console script pip writes, run with this
  interpreter.
- A trivial body through a job prefix: in a fresh process, a body awaits
  ``Trivial(i).run()`` (``trivial.py``) for i = 0..N-1 one after another, with
  ``prefixes={channel: ["env"]}``, so each is ``env python -m asyncflow.worker JOB``;
  the median is over the bodies after the first of every process (the first also pays
  what the run imports for its first job, shown apart). Twice: the class travelling by
  value, as one defined in a script (``__main__``) does, and imported by name, as one
  from a module does.

The table (markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

IMPORT_TIMED = "import time\nt = time.perf_counter()\nimport asyncflow\nprint(time.perf_counter() - t)\n"

# What pip writes for the `asyncflow` console script (`[project.scripts]`).
CONSOLE_SCRIPT = """\
import re
import sys
from asyncflow._cli import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""

# The child of the prefix measure: a body awaits trivial bodies one after another, each
# through `env` (awaited from a body, a task joins its run: what is timed is what the run
# does for one more body, as benchmarks/places.py times it). `trivial.py` sits beside it.
# By value, the task class travels in the payload as a class defined in a script does
# (the worker then imports cloudpickle to unpickle it); by name, the worker imports it.
PREFIX_CHILD = """\
import json
import sys

import cloudpickle
import trivial

if __name__ == "__main__":
    bodies, cache_dir, how = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if how == "value":
        cloudpickle.register_pickle_by_value(trivial)
    options = {"cache_dir": cache_dir, "prefixes": {trivial.CHANNEL: ["env"]}}
    print(json.dumps(trivial.Latency(bodies).run_graph(**options)))
"""


class Checkout:
    """A checkout whose asyncflow is measured, and the samples taken of it (seconds)."""

    def __init__(self, path: Path, label: str, tmp: Path, pycache: Path) -> None:
        self.path = path
        self.label = label
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        self.env.update(PYTHONPATH=str(path), PYTHONPYCACHEPREFIX=str(pycache))
        self.samples: dict[str, list[float]] = {}

    def describe(self) -> str:
        """Name the checkout and its commit (``+`` when its tree has changes)."""
        git = ["git", "-C", str(self.path)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "asyncflow"], capture_output=True, text=True
        )
        name = commit.stdout.strip() or "no git"
        return f"{self.label}: {self.path} ({name}{'+' if dirty.stdout.strip() else ''})"

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, *argv], cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            sys.exit(f"{self.label}: {' '.join(argv[:2])} failed ({done.returncode}):\n{done.stderr}")
        return done

    def wall(self, *argv: str) -> float:
        t0 = time.perf_counter()
        self.run(*argv)
        return time.perf_counter() - t0

    def add(self, name: str, *values: float) -> None:
        self.samples.setdefault(name, []).extend(values)


def one_round(c: Checkout, prefix: bool, bodies: int) -> None:
    """Take one sample of every measure of checkout `c` (and, with `prefix`, a prefix run)."""
    c.add("pass", c.wall("-c", "pass"))
    c.add("anyio", c.wall("-c", "import anyio"))
    c.add("import", float(c.run("-c", IMPORT_TIMED).stdout))
    c.add("import wall", c.wall("-c", "import asyncflow"))
    c.add("help", c.wall(str(c.tmp / "asyncflow"), "--help"))
    if prefix:
        for how, name in (("value", "body"), ("name", "body by name")):
            cache = tempfile.mkdtemp(dir=c.tmp)
            times = json.loads(c.run(str(c.tmp / "prefix_child.py"), str(bodies), cache, how).stdout)
            shutil.rmtree(cache)
            c.add(f"first {name}", times[0])
            c.add(name, *times[1:])


ROWS = [
    ("pass", "python -c pass (the interpreter alone), wall", ""),
    ("anyio", 'python -c "import anyio", wall (for reference)', ""),
    ("import", "import asyncflow, timed in the process", ""),
    ("import wall", 'python -c "import asyncflow", wall', "<= 40"),
    ("help", "asyncflow --help, wall", "<= 120"),
    ("body", 'a trivial body through a job prefix (["env"]), per body; its class by value', "<= 60"),
    ("first body", "the same, the first body of a process (its run's first imports)", ""),
    ("body by name", "the same, its class imported by name (no cloudpickle in the worker)", "<= 60"),
    ("first body by name", "the same, the first body of a process", ""),
]


def table(checkouts: list[Checkout]) -> list[str]:
    head = "| measure |" + "".join(f" {c.label} ms | min-max |" for c in checkouts)
    rule = "|---------|" + "---:|---:|" * len(checkouts)
    if len(checkouts) == 2:
        head += " this / baseline |"
        rule += "---:|"
    lines = [head + " target ms |", rule + "---|"]
    for key, name, target in ROWS:
        cells = f"| {name} |"
        medians: list[float] = []
        for c in checkouts:
            values = [v * 1000 for v in c.samples.get(key, [])]
            if not values:
                cells += " | |"
                continue
            medians.append(statistics.median(values))
            cells += f" {medians[-1]:.1f} | {min(values):.1f}-{max(values):.1f} |"
        if len(checkouts) == 2:
            cells += f" {medians[0] / medians[1]:.2f}x |" if len(medians) == 2 else " |"
        lines.append(cells + f" {target} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, help="fresh processes per measure (default 21; --quick 7)")
    parser.add_argument(
        "--prefix-runs", type=int, help="processes for the prefix measure (default 3; --quick 1)"
    )
    parser.add_argument("--bodies", type=int, help="bodies per prefix process (default 21; --quick 11)")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeat = args.repeat or (7 if args.quick else 21)
    prefix_runs = args.prefix_runs or (1 if args.quick else 3)
    bodies = args.bodies or (11 if args.quick else 21)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="af-startup-") as tmp:
        checkouts = [Checkout(HERE, "this", Path(tmp), Path(tmp) / "pycache")]
        if args.baseline is not None:
            baseline = args.baseline.resolve()
            if not (baseline / "asyncflow" / "__init__.py").is_file():
                sys.exit(f"--baseline {baseline}: no asyncflow package there")
            checkouts.append(Checkout(baseline, "baseline", Path(tmp), Path(tmp) / "pycache"))
        (Path(tmp) / "asyncflow").write_text(CONSOLE_SCRIPT)
        (Path(tmp) / "prefix_child.py").write_text(PREFIX_CHILD)
        shutil.copy(Path(__file__).with_name("trivial.py"), Path(tmp) / "trivial.py")
        for c in checkouts:  # unmeasured: fills the bytecode cache
            print(f"warming up {c.label}...", file=sys.stderr)
            one_round(c, True, 2)
            c.samples.clear()
        for i in range(repeat):
            print(f"round {i + 1}/{repeat}", file=sys.stderr)
            order = checkouts if i % 2 == 0 else checkouts[::-1]
            for c in order:
                one_round(c, i < prefix_runs, bodies)
        described = "; ".join(c.describe() for c in checkouts)
    cpus = os.cpu_count()
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(
        f"asyncflow start-up, Python {platform.python_version()}, {cpus} CPUs, {platform.system()} "
        f"{platform.machine()}, {day}; medians of {repeat} fresh processes per measure, the prefix "
        f"{prefix_runs} x {bodies - 1} bodies after the first; {time.perf_counter() - started:.0f} s in all"
    )
    print(described)
    print()
    print("\n".join(table(checkouts)))


if __name__ == "__main__":
    main()
