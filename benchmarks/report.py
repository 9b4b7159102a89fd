"""The report: the markdown table of medians, its notes and ratios, and what was measured.

A `Case` is one row (an engine's mode at one workload, measured or not and why);
`rows_for` turns a workload's cases into rows (medians, ratios to the floor and to
asyncflow, `notes_for`), `table` lays them out. `engine_state` and `peer_versions` name
the asyncflow sources and the peers' versions for the header.
"""

from __future__ import annotations

import hashlib
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from measure import Samples
from suite import FLOORS, Engine, Workload, base_mode

HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    """One row: an engine's mode at one workload, measured (`samples`) or not (`why`)."""

    engine: Engine
    mode: str
    samples: Samples | None = None
    why: str = ""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


CHILDREN_RSS_NOTE_KB = 4 * 1024  # a peer's subprocesses bigger than this are noted


def _note_parts(notes: str) -> list[str]:
    return [part.strip() for part in notes.split("; ") if part.strip()]


def common_notes(cases: list[Case]) -> dict[str, list[str]]:
    """Per peer engine, the parts of its script's notes found in every one of its results.

    They are printed once under the table instead of on every row.
    """
    parts: dict[str, list[list[str]]] = {}
    for case in cases:
        for r in case.samples.results if case.engine.peer and case.samples else []:
            parts.setdefault(case.engine.name, []).append(_note_parts(r.get("notes") or ""))
    return {
        name: [part for part in lists[0] if all(part in other for other in lists[1:])]
        for name, lists in parts.items()
    }


def notes_for(w: Workload, case: Case, wall: float, shared: list[str]) -> list[str]:
    """What a reader must know about one measured row, besides its numbers.

    `shared`: notes of the engine's script said on every row, left out here.
    """
    import workloads

    s, mode, engine = case.samples, base_mode(case.mode), case.engine
    assert s is not None
    notes: list[str] = []
    if not engine.caches and (engine.peer or engine.name in FLOORS):
        notes.append("no cache")
    if not all(r["ok"] for r in s.results):
        got = sorted({r.get("result", "?") for r in s.results if not r["ok"]})
        notes.append("WRONG RESULT" + (f" {', '.join(map(str, got))[:60]}" if engine.peer else ""))
    if s.error:
        notes.append(f"{len(s.results)} ok, then ERROR {s.error}")
    if s.cut_short:
        notes.append("1 run only: over the budget")
    runs = [(r["run"], r["reused"]) for r in s.results if r.get("run") is not None]
    if mode == "cold" and any(b for _, b in runs):
        notes.append("cold reused nodes?")
    if mode == "warm" and any(a for a, _ in runs):
        clean = [r["wall"] for r in s.results if r.get("run") == 0]
        notes.append(
            f"{len(s.results) - len(clean)} of {len(s.results)} warm runs re-ran nodes (executed > 0)"
            + (f"; clean warm median {statistics.median(clean):.3f} s" if clean else "")
        )
    if mode == "root-stale" and any(a != 1 for a, _ in runs):
        notes.append("expected exactly the root to run")
    if w.kind == "W4" and mode == "cold":
        ideal = w.size * workloads.W4_SLEEP / workloads.W4_LIMIT
        peaks = sorted({r["peak"] for r in s.results if r.get("peak") is not None})
        notes.append(
            f"ideal {ideal:.2f} s ({(wall - ideal) * 1000:+,.0f} ms); peak concurrency "
            f"{'/'.join(map(str, peaks)) or '?'} (limit {workloads.W4_LIMIT})"
        )
    children = max((r.get("rss_children_kb") or 0) for r in s.results)
    if engine.peer and children > CHILDREN_RSS_NOTE_KB:
        notes.append(f"subprocesses peak RSS {children / 1024:.0f} MiB")
    # Notes that differ per run (a split of the time, a server's start-up): the median run's.
    middle = sorted(s.results, key=lambda r: r["wall"])[len(s.results) // 2]
    notes += [part for part in _note_parts(middle.get("notes") or "") if part not in shared]
    return notes


def _counts(case: Case) -> str:
    assert case.samples is not None
    runs = sorted({(r["run"], r["reused"]) for r in case.samples.results if r.get("run") is not None})
    if not runs or (case.engine.name in FLOORS and not case.engine.caches):
        return ""
    return ", ".join(f"{a}/{b}" for a, b in runs)


def _ratio(wall: float, other: float | None) -> str:
    if not other:
        return ""
    return f"{wall / other:.2f}x" if wall / other < 10 else f"{wall / other:.1f}x"


def rows_for(
    w: Workload, cases: list[Case], shared: dict[str, list[str]], static: dict[str, float] | None = None
) -> list[list[str]]:
    """The table's rows for workload `w`, in the order of `cases`; `shared`: see `common_notes`.

    `static`: for W5, asyncflow's median wall per mode on W2 of the same size (the static
    fan-out the dynamic one is compared with).
    """

    def median_wall(engine: str, mode: str) -> float | None:
        for c in cases:
            if c.engine.name == engine and c.mode == mode and c.samples and c.samples.results:
                return c.samples.median("wall")
        return None

    floor_wall = median_wall("floor", "cold")
    rows: list[list[str]] = []
    for case in cases:
        s = case.samples
        if s is None or not s.results:
            why = case.why or (s.error if s and s.error else "not run: an earlier step failed")
            mark = "ERROR" if s and s.error else "-"
            rows.append([w.label, case.engine.name, "", case.mode, mark, "", "", "", "", "", "", "", why])
            continue
        wall = s.median("wall")
        walls = [r["wall"] for r in s.results]
        nodes = s.results[0]["nodes"]
        name = case.engine.name
        vs_floor = _ratio(wall, floor_wall) if name == "asyncflow" or name in FLOORS else ""
        vs_asyncflow = "" if name == "asyncflow" else _ratio(wall, median_wall("asyncflow", case.mode))
        notes = notes_for(w, case, wall, shared.get(name, []))
        if static and static.get(case.mode):
            notes.insert(
                0, f"{_ratio(wall, static[case.mode])} the static fan-out (W2 {w.size:,} {case.mode})"
            )
        rows.append(
            [
                w.label,
                name,
                f"{nodes:,}",
                case.mode,
                f"{wall:.3f}",
                f"{min(walls):.3f}-{max(walls):.3f}",
                f"{wall / nodes * 1e6:,.0f}",
                f"{s.median('rss_kb') / 1024:.0f}",
                _size(statistics.median(s.disk)) if s.disk and case.engine.caches else "",
                _counts(case),
                vs_floor,
                vs_asyncflow,
                "; ".join(notes),
            ]
        )
    return rows


HEADER = [
    "workload",
    "engine",
    "nodes",
    "mode",
    "wall s",
    "min-max s",
    "us/node",
    "RSS MiB",
    "cache",
    "run/reused",
    "vs floor",
    "vs asyncflow",
    "notes",
]
RIGHT = {2, 4, 5, 6, 7, 8, 10, 11}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in RIGHT else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in RIGHT else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(HEADER), sep, *(line(r) for r in rows)])


def engine_state() -> str:
    """The commit and a hash of asyncflow's sources, to tell which engine was measured."""
    package = HERE.parent / "asyncflow"
    digest = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "asyncflow"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "?", ""
    return f"commit {commit}{' + uncommitted changes' if dirty else ''}, sources {digest.hexdigest()[:10]}"


def peer_versions(cases: list[Case]) -> str:
    """``name version`` of everything the peers' scripts reported, in the order seen."""
    seen: dict[str, str] = {}
    for case in cases:
        for r in case.samples.results if case.samples else []:
            for name, version in (r.get("versions") or {}).items():
                if name.lower() == "python" and version == platform.python_version():
                    continue
                seen.setdefault(f"{name} {version}", "")
    return ", ".join(seen)
