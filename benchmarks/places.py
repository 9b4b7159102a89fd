"""Trivial-body latency per place a body runs: threads, processes, a job prefix, Slurm and SSH (a job per body or a warm pool), Dask, Ray.

    set -a; . /tmp/asyncflow-test-slurm/env.sh; . /tmp/asyncflow-test-sshd/env.sh; set +a
    python benchmarks/places.py [--bodies 30] [--backend trio]

One run per place, on a fresh cache directory: a body awaits `Trivial(i).run()` for i in
0..N-1, one after another, and times each (a task run from a body joins the run: what
is timed is what the run does for one more body, graph, cache and runner included).
The first body pays what the place costs to start (a connection, a worker) and is shown
apart; the others give the median and range. Places whose service is not configured
(the `-up` scripts' variables, see `tests/service_env.py`) or whose engine is not
installed are skipped, and a place that fails is reported, each with the reason, and the
others go on. The table (markdown) goes to stdout. run.py runs it as a section.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Any

import anyio
import cloudpickle
import trivial
from trivial import CHANNEL, Latency

from asyncflow import Dask, Host, Ray, Slurm

# As a class defined in the script would: its jobs and workers need not import `trivial`.
cloudpickle.register_pickle_by_value(trivial)


def places() -> list[tuple[str, dict[str, Any] | str]]:
    """Each place's name and its run options, or why it is skipped."""
    out: list[tuple[str, dict[str, Any] | str]] = [
        ("thread (baseline)", {}),
        ("worker process", {"executor": "process"}),
        ("job prefix (env), a process per body", {"prefixes": {CHANNEL: ["env"]}}),
    ]
    env = os.environ
    if env.get("SLURM_CONF"):
        partition = env.get("ASYNCFLOW_SLURM_PARTITION")
        for name, workers in (("slurm srun, a job per body", None), ("slurm srun, warm pool", 1)):
            slurm = Slurm(partition=partition, time="00:10:00", workers=workers)
            out.append((name, {"prefixes": {CHANNEL: slurm}}))
    else:
        out.append(("slurm", "skipped: SLURM_CONF is not set (bash tests/services/slurm-up.sh)"))
    if env.get("ASYNCFLOW_SSH_HOST"):
        for name, workers in (("ssh, a command per body", None), ("ssh, warm pool", 1)):
            host = Host(
                env["ASYNCFLOW_SSH_HOST"],
                int(env["ASYNCFLOW_SSH_PORT"]),
                env.get("ASYNCFLOW_SSH_USER"),
                python=sys.executable,  # the test sshd runs on this machine
                key_file=env.get("ASYNCFLOW_SSH_KEY"),
                known_hosts=env.get("ASYNCFLOW_SSH_KNOWN_HOSTS"),
                workers=workers,
            )
            out.append((name, {"hosts": {CHANNEL: host}}))
    else:
        out.append(("ssh", "skipped: ASYNCFLOW_SSH_HOST is not set (bash tests/services/sshd-up.sh)"))
    try:
        import distributed

        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        _ENGINES.append(cluster)
        client = distributed.Client(cluster)
        _ENGINES.append(client)
        out.append(("dask LocalCluster (2 processes)", {"prefixes": {CHANNEL: Dask(client)}}))
    except ImportError:
        out.append(("dask", "skipped: dask.distributed is not installed (pip install 'asyncflow[dask]')"))
    try:
        import ray

        ray.init(num_cpus=2, include_dashboard=False)
        out.append(("ray, local", {"prefixes": {CHANNEL: Ray()}}))
    except ImportError:
        out.append(("ray", "skipped: ray is not installed (pip install 'asyncflow[ray]')"))
    return out


_ENGINES: list[Any] = []  # Dask's client and cluster, closed at the end


async def measure(bodies: int, where: list[tuple[str, dict[str, Any] | str]]) -> list[str]:
    rows = [
        "| place | first body ms | median ms | min-max ms | bodies |",
        "|-------|--------------:|----------:|-----------:|-------:|",
    ]
    for name, options in where:
        if isinstance(options, str):
            rows.append(f"| {name} | | | | {options} |")
            continue
        print(f"{name}...", file=sys.stderr)
        try:
            with tempfile.TemporaryDirectory() as cache_dir:
                times = await Latency(bodies).run(cache_dir=cache_dir, **options)
        except Exception as exc:  # a broken service costs its own row, not the table
            print(f"{name}: {exc!r}", file=sys.stderr)
            first = (str(exc).splitlines() or [""])[0].replace("|", "\\|")  # a table's cell
            rows.append(f"| {name} | | | | failed: {type(exc).__name__}: {first} |")
            continue
        ms = [t * 1000 for t in times]
        rest = ms[1:]
        rows.append(
            f"| {name} | {ms[0]:.1f} | {statistics.median(rest):.1f} | "
            f"{min(rest):.1f}-{max(rest):.1f} | {len(rest)} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bodies", type=int, default=30, help="bodies per place (default 30)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    where = places()  # Dask's and Ray's own threads start here, outside the run's loop
    try:
        rows = anyio.run(measure, args.bodies, where, backend=args.backend)
    finally:
        for engine in reversed(_ENGINES):
            engine.close()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
