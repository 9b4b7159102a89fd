"""The big-value case: one large result read by several tasks, per place bodies run in.

    python benchmarks/bigvalue.py [--mb 200] [--readers 4] [--repeat 3] [--places thread process ...]
                                  [--backend asyncio|trio]

Each measurement is a fresh process on a fresh cache directory: `Top(mb, readers)` cold,
where `Big(mb)` returns `mb` MB of bytes and each `Reader(mb, i)` reads it. Prints a
markdown table of medians and their ratio to threads; a place that cannot run here (an
engine not installed, a service not started) or fails gets a row that says why. Places:
``thread`` (the default executor), ``process`` (``executor="process"``), ``dask`` (a
``LocalCluster`` of 2 worker processes, as ``executor=asyncflow.Dask(client)`` when
asyncflow has it, else the client's ``get_executor()``), ``ray`` (a local Ray of 2 CPUs),
and, with `Big` and `Reader` both placed there, ``prefix`` (``["env"]``), ``slurm`` and
``ssh`` (a job per body) and ``slurm-pool`` and ``ssh-pool`` (2 warm workers), against
the services of ``tests/services/`` (source their ``env.sh`` first). run.py runs it as a
section.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, sys, tempfile, time, gc
import anyio
import asyncflow
from asyncflow import Requires, RequiresList, Task


class Big(Task, compress_level=1):
    def build_task(self, mb: int) -> None:
        self.mb = mb

    def run_task(self) -> bytes:
        return bytes(range(256)) * (self.mb * 4096)


class Reader(Task):
    big: Requires[bytes]

    def build_task(self, mb: int, i: int) -> None:
        self.big = Big(mb)
        self.i = i

    def run_task(self) -> int:
        return len(self.big) + self.i


class Top(Task):
    parts: RequiresList[int]

    def build_task(self, mb: int, n: int) -> None:
        self.parts = [Reader(mb, i) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)


def main() -> None:
    place, mb, n, cache, backend = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    options = {"cache_dir": cache}
    closing = []
    env = os.environ
    if place == "process":
        options["executor"] = "process"
    elif place in ("prefix", "slurm", "slurm-pool", "ssh", "ssh-pool"):
        workers = 2 if place.endswith("-pool") else None
        if place == "prefix":
            where = ["env"]
        elif place.startswith("slurm"):
            where = asyncflow.Slurm(partition=env.get("ASYNCFLOW_SLURM_PARTITION"), time="00:10:00", workers=workers)
        else:
            where = asyncflow.Host(
                env["ASYNCFLOW_SSH_HOST"], int(env["ASYNCFLOW_SSH_PORT"]), env.get("ASYNCFLOW_SSH_USER"),
                python=sys.executable,  # the test sshd runs on this machine
                key_file=env.get("ASYNCFLOW_SSH_KEY"), known_hosts=env.get("ASYNCFLOW_SSH_KNOWN_HOSTS"),
                workers=workers,
            )
        channels = {Big.task_name: where, Reader.task_name: where}
        options["hosts" if place.startswith("ssh") else "prefixes"] = channels
    elif place == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
        closing = [ray.shutdown]
        options["executor"] = asyncflow.Ray()
    elif place == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        closing = [client.close, cluster.close]
        dask = getattr(asyncflow, "Dask", None)
        options["executor"] = dask(client) if dask is not None else client.get_executor()
    gc.collect()
    t0 = time.perf_counter()
    value = anyio.run(lambda: Top(mb, n).run(**options), backend=backend)
    took = time.perf_counter() - t0
    assert value == n * mb * 2**20 + n * (n - 1) // 2, value
    for close in closing:
        close()
    print(json.dumps({"took": took}))


main()
"""


PLACES = ["thread", "process", "dask", "ray", "prefix", "slurm", "slurm-pool", "ssh", "ssh-pool"]


def measure(place: str, mb: int, readers: int, backend: str) -> float:
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, place, str(mb), str(readers), cache, backend],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(last)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["took"])


def why_not(place: str) -> str | None:
    """Why `place` cannot run here, or None."""
    if place == "dask" and importlib.util.find_spec("distributed") is None:
        return "skipped: dask.distributed is not installed (pip install 'asyncflow[dask]')"
    if place == "ray" and importlib.util.find_spec("ray") is None:
        return "skipped: ray is not installed (pip install 'asyncflow[ray]')"
    if place.startswith("slurm") and not os.environ.get("SLURM_CONF"):
        return "skipped: SLURM_CONF is not set (bash tests/services/slurm-up.sh)"
    if place.startswith("ssh") and not os.environ.get("ASYNCFLOW_SSH_HOST"):
        return "skipped: ASYNCFLOW_SSH_HOST is not set (bash tests/services/sshd-up.sh)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--places", nargs="+", choices=PLACES, default=PLACES)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    notes: dict[str, str] = {}  # place: why it has no time, or not all of its repeats
    for place in args.places:
        if why := why_not(place):
            notes[place] = why
            continue
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            try:
                rows.setdefault(place, []).append(measure(place, args.mb, args.readers, args.backend))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{place}: failed: {exc}", file=sys.stderr)
                notes[place] = f"failed: {exc}".replace("|", "\\|")  # a table's cell
                break
            print(
                f"{place}: {rows[place][-1]:.2f} s (child {time.perf_counter() - t0:.1f} s)", file=sys.stderr
            )
    base = statistics.median(rows["thread"]) if rows.get("thread") else None
    print(
        f"| place | {args.mb} MB read by {args.readers}, cold (median of {args.repeat}) "
        "| min-max | vs threads | notes |"
    )
    print("| --- | ---: | ---: | ---: | --- |")
    for place in args.places:
        times = rows.get(place, [])
        if not times:  # it never ran: the reason alone
            print(f"| {place} | - | | | {notes.get(place, '')} |")
            continue
        median = statistics.median(times)
        ratio = f"{median / base:.1f}x" if base else "-"
        spread = f"{min(times):.2f}-{max(times):.2f} s"
        print(f"| {place} | {median:.2f} s | {spread} | {ratio} | {notes.get(place, '')} |")


if __name__ == "__main__":
    main()
