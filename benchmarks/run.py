"""Benchmark harness: time asyncflow's workloads cold and warm, next to floors and peers.

    python benchmarks/run.py [--quick] [--no-peers] [--backend asyncio|trio] [--only W2 places ...]

Engines: asyncflow itself; the event-loop floors of floor.py (``floor``: plain coroutines
in an anyio task group; ``native``: the backend's own task group; ``naive-cache``: the
anyio floor writing one pickle file per result, and reading them back when warm); and the
peers, other workflow engines run by ``benchmarks/peers/<peer>_peer.py`` (the protocol is
in peers/common.py), each in a virtualenv of its own that this harness builds from
``benchmarks/peers/<peer>.txt`` and reuses (under ``~/.cache/asyncflow-bench/venvs``).

For every workload, engine and repeat, a fresh temporary cache directory is made; one
child process runs the workload cold (empty cache), a second child runs it again warm
(same cache, everything reusable); for asyncflow on W2 a third clears the root's result
and runs again (root-stale: one node runs, reading every leaf from the cache). Engines
without a cache (``floor``, ``native``, dask) run cold only. Each child times the run itself (not
interpreter start or imports) and reports its peak RSS; the parent measures the cache on
disk and prints one markdown table of medians, with each engine's ratio to asyncflow.
Before a peer runs a bigger size of a workload, its cold time is estimated linearly from
the smaller size; above ``--budget`` seconds the size is skipped. ``--one`` is the
child's mode.

After the table come the sections (sections.py): scripts beside the harness that print
a table of their own, such as the big-value case per place and a trivial body's latency
per place, each run once in a child process. ``--only`` and ``--skip`` take their names
as they take the workloads'; ``--no-sections`` leaves them all out.

This file is the entry point: the command line, every case run in order, the header and
the table printed. The rest of the harness, by job: suite.py (the workloads, the engines,
the child's timed run), venvs.py (the peers' virtualenvs), children.py (child processes,
timeouts), measure.py (repeats on fresh caches), report.py (the table), sections.py (the
sections). floor.py and workloads.py are what the floors and asyncflow run, peers/ what
the peers run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

# floor.py, workloads.py, peers/ and the modules below are imported from this directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from children import Context
from measure import cold_seconds, measure, over_budget
from report import Case, common_notes, engine_state, peer_versions, rows_for, table
from sections import SECTION_NAMES, SECTIONS, Section, command_line, run_section
from suite import ENGINES, FULL, LARGE, MODES, PEER_NAMES, QUICK, Engine, Workload, child
from venvs import PEERS_DIR, VENVS_DIR, prepare_peer


def select_engines(args: argparse.Namespace) -> list[Engine]:
    """The engines to run, in the table's order: --engines, else the defaults (less peers)."""
    by_name = {e.name: e for e in ENGINES}
    if args.engines:
        wanted: set[str] = set()
        for name in args.engines:
            matches = [e.name for e in ENGINES if name in (e.name, e.peer)]
            if not matches:
                known = f"{', '.join(by_name)} (or a peer: {', '.join(PEER_NAMES)})"
                sys.exit(f"unknown engine {name!r}; known: {known}")
            wanted |= {m for m in matches if by_name[m].default or m == name}
        return [e for e in ENGINES if e.name in wanted]
    if args.no_peers:
        return [e for e in ENGINES if e.default and e.peer is None]
    if args.peers:
        unknown = set(args.peers) - set(PEER_NAMES) - {e.name for e in ENGINES if e.peer}
        if unknown:
            sys.exit(f"unknown peer(s) {', '.join(sorted(unknown))}; known: {', '.join(PEER_NAMES)}")
        return [
            e
            for e in ENGINES
            if e.default and (e.peer is None or e.peer in args.peers or e.name in args.peers)
        ]
    return [e for e in ENGINES if e.default]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat, budget 30 s")
    parser.add_argument(
        "--large", action="store_true", help="also W2 1,000,000 and W3 100,000 (asyncflow, first runs only)"
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--repeat", type=int, help="measurements per case (default 3; --quick 1)")
    parser.add_argument("--peer-repeat", type=int, help="measurements per case for peers (default: --repeat)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"run only these workloads (W1 .. W5) and sections ({', '.join(SECTION_NAMES)})",
    )
    parser.add_argument("--skip", nargs="+", metavar="NAME", help="leave out these workloads and sections")
    parser.add_argument("--no-sections", action="store_true", help="the main table only")
    parser.add_argument(
        "--engines",
        nargs="+",
        metavar="E",
        help=f"run only these engines: {', '.join(e.name for e in ENGINES)}, or a peer's name for its variants",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        metavar="P",
        help=f"asyncflow, the floors and these peers: {', '.join(PEER_NAMES)}",
    )
    parser.add_argument("--no-peers", action="store_true", help="asyncflow and the floors only")
    parser.add_argument(
        "--budget",
        type=float,
        help="skip a peer's bigger size whose estimated cold run is longer, and stop a peer's run "
        "after 5 times this (s; default 120, --quick 30)",
    )
    parser.add_argument(
        "--venvs",
        type=Path,
        default=VENVS_DIR,
        help=f"where the peers' virtualenvs live (default {VENVS_DIR})",
    )
    parser.add_argument("--tmp", type=Path, help="where to make the cache directories (default: $TMPDIR)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one child may take")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="asyncflow", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_all(
    chosen: list[Workload], engines: list[Engine], repeat: int, peer_repeat: int, ctx: Context
) -> list[tuple[Workload, list[Case]]]:
    """Every engine on every workload it runs, in order; a case for each row of the table."""
    measured: list[tuple[Workload, list[Case]]] = []
    known: dict[tuple[str, str], tuple[int, float]] = {}  # (engine, kind): (size, cold seconds)
    for w in chosen:
        print(f"{w.label} ...", file=sys.stderr)
        cases: list[Case] = []
        for e in (e for e in engines if e.runs(w)):
            setup = ctx.peers.get(e.peer) if e.peer else None
            why = (setup.problem if setup else None) or over_budget(e, w, known, ctx.budget)
            if why:
                print(f"  {e.name}: {why}", file=sys.stderr)
                cases.append(Case(e, "-", why=why))
                continue
            samples = measure(w, e, peer_repeat if e.peer else repeat, ctx)
            cases += [Case(e, mode, s) for mode, s in samples.items()]
            seconds = cold_seconds(samples, ctx.timeout_for(e))
            if seconds is not None:
                known[(e.name, w.kind)] = (w.size, seconds)
        measured.append((w, cases))
    return measured


def select_sections(args: argparse.Namespace) -> list[Section]:
    """The sections to run after the table: those --only and --skip leave in, whose script is there."""
    if args.no_sections:
        return []
    chosen = [s for s in SECTIONS if wanted(s.name, args)]
    for s in chosen:
        if not s.exists() and args.only:  # asked for by name: say why nothing comes
            print(f"{s.name}: {s.path} is not there; left out", file=sys.stderr)
    return [s for s in chosen if s.exists()]


def wanted(name: str, args: argparse.Namespace) -> bool:
    """Whether --only and --skip leave the workload or section `name` in."""
    return (not args.only or name in args.only) and name not in (args.skip or ())


def check_names(args: argparse.Namespace) -> None:
    """Refuse a name in --only or --skip that is neither a workload nor a section."""
    known = [*dict.fromkeys(w.kind for w in FULL), *SECTION_NAMES]
    unknown = [n for n in (args.only or []) + (args.skip or []) if n not in known]
    if unknown:
        sys.exit(f"unknown workload or section {', '.join(unknown)}; known: {', '.join(known)}")


def main() -> None:
    args = parse_args()
    if args.one:
        kind, size = args.one[0], int(args.one[1])
        print(json.dumps(child(kind, size, args.engine, args.mode, args.cache_dir, args.backend)))
        return

    check_names(args)
    repeat = args.repeat or (1 if args.quick else 3)
    peer_repeat = args.peer_repeat or repeat
    sizes = (QUICK if args.quick else FULL) + (LARGE if args.large else [])
    chosen = [w for w in sizes if wanted(w.kind, args)]
    engines = select_engines(args) if chosen else []
    sections = select_sections(args)
    started = time.perf_counter()
    engine = engine_state()
    venvs = args.venvs.expanduser()
    peer_names = dict.fromkeys(e.peer for e in engines if e.peer)  # each once, in order
    peers = {peer: prepare_peer(peer, args.peers_dir, venvs) for peer in peer_names}
    budget = args.budget or (30.0 if args.quick else 120.0)
    measured = run_all(
        chosen, engines, repeat, peer_repeat, Context(args.backend, args.timeout, args.tmp, budget, peers)
    )
    every_case = [case for _, cases in measured for case in cases]
    shared = common_notes(every_case)
    import asyncflow

    measuring = " (quick)" if args.quick else ""
    if measured:  # the main table's repeats and time; each section says its own
        peers_of = f" (peers: of {peer_repeat})" if peers and peer_repeat != repeat else ""
        measuring = f", median of {repeat}{peers_of}{measuring}, {time.perf_counter() - started:.0f} s in all"
    print(
        f"asyncflow {asyncflow.__version__}, Python {platform.python_version()}, "
        f"backend {args.backend}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"{datetime.date.today()}{measuring}"
    )
    print(f"engine: {engine}")
    if peers:
        versions = peer_versions(every_case) or "none ran"
        print(f"peers: {versions}; budget {budget:g} s per run; venvs in {venvs}")
    now = engine_state()
    if now.split("sources ")[-1] != engine.split("sources ")[-1]:  # a commit alone changes nothing
        print(f"WARNING: asyncflow changed while measuring (now {now}); rerun")
    if measured:
        print()
        print_table(measured, shared)
    # Each section is printed as it ends: a long run shows what it has, and a section
    # that fails or hangs costs only its own table.
    for section in sections:
        argv = section.argv(quick=args.quick, repeat=repeat, backend=args.backend)
        shown, seconds = run_section(section, argv, args.timeout)
        print(f"\n### {section.title}\n\n`{command_line(argv)}`, {seconds:.0f} s\n\n{shown}", flush=True)


def print_table(measured: list[tuple[Workload, list[Case]]], shared: dict[str, list[str]]) -> None:
    """The main table, and the notes every row of a peer shares."""
    static = {  # asyncflow on W2, by size and mode: what W5's dynamic fan-out is compared with
        (w.size, c.mode): c.samples.median("wall")
        for w, cases in measured
        if w.kind == "W2"
        for c in cases
        if c.engine.name == "asyncflow" and c.samples and c.samples.results
    }
    rows = [
        row
        for w, cases in measured
        for row in rows_for(
            w,
            cases,
            shared,
            {m: t for (n, m), t in static.items() if n == w.size} if w.kind == "W5" else None,
        )
    ]
    print(table(rows))
    if any(shared.values()):
        print("\nWhat the peers' scripts say on every row of theirs:\n")
        for name, parts in shared.items():
            if parts:
                print(f"- {name}: {'; '.join(parts)}")
    sys.stdout.flush()  # before a section's child writes its progress


if __name__ == "__main__":
    main()
