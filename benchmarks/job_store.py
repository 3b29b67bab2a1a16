"""Job store benchmark: claims per second and job throughput with 1, 2 and 4 worker processes,
PostgreSQL against SQLite, on one host.

    .venv/bin/python benchmarks/job_store.py --jobs 400

Each worker is a process with its own store and connections (as ``ct2mri-node worker`` is). Two
phases per backend and worker count, on a fresh database holding ``--jobs`` queued jobs:

* claims: workers take jobs by ``JobDispatch.claim()`` (lease written) until none is left;
* throughput: a full trivial job: claim, record a delivery, complete, release the lease.

PostgreSQL is a throw-away server started here (``initdb`` in a temporary folder, as the tests
do), or ``--url`` (an empty database: its job tables are dropped and made again). Both stores
commit durably (SQLite ``synchronous=FULL``; PostgreSQL ``fsync=on``, ``synchronous_commit=on``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "node"), str(ROOT / "tests" / "reliability"), str(ROOT / "tests" / "scale")]

from ct2mri_node.jobs.queue import JobDispatch
from ct2mri_node.jobs.store import JobStore


def _worker(location: str, full: bool, start: mp.synchronize.Event, done: mp.Queue) -> None:  # type: ignore[type-arg]
    dispatch = JobDispatch(JobStore(location), lease_s=600, owner=f"bench-{mp.current_process().pid}")
    store = dispatch.store
    start.wait()
    count = 0
    while (job := dispatch.claim()) is not None:
        if full:
            store.record_delivery(job.id, "archive", "done")
            store.complete(job.id)
            dispatch.release(job.id)
        count += 1
    done.put(count)


def _fresh(location: str, jobs: int) -> None:
    store = JobStore(location)
    JobDispatch(store)
    with store.transaction() as conn:
        for table in ("job_dispatch", "provenance", "deliveries", "jobs"):
            conn.execute(f"DELETE FROM {table}")  # fixed names
    for i in range(jobs):
        store.enqueue(f"2.25.{i}", "2.25")


def run(location: str, workers: int, jobs: int, full: bool) -> float:
    """Jobs per second over ``jobs`` queued jobs taken by ``workers`` processes."""
    _fresh(location, jobs)
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(location, full, start, done)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(1.0 + 0.5 * workers)   # let every process import and connect
    t0 = time.perf_counter()
    start.set()
    taken = sum(done.get(timeout=600) for _ in procs)
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
    if taken != jobs:
        raise SystemExit(f"{taken} jobs taken of {jobs}: a job was claimed twice or lost")
    return jobs / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--url", default=None, help="an empty PostgreSQL database (default: start a throw-away server)")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        from scalekit import start_postgres

        server = start_postgres()
        url = server.url
    work = Path(tempfile.mkdtemp(prefix="ct2mri-bench-store-"))
    locations = {"sqlite": str(work / "jobs.sqlite3"), "postgresql": url}
    results: dict[tuple[str, str, int], float] = {}
    try:
        for phase, full in (("claims/s", False), ("jobs/s", True)):
            for backend, location in locations.items():
                for n in args.workers:
                    results[phase, backend, n] = rate = run(location, n, args.jobs, full)
                    print(f"{backend:<10} {phase:<9} workers={n}: {rate:8.1f}", flush=True)
    finally:
        if server is not None:
            server.remove()
    print(f"\n{args.jobs} jobs, one host; ratio = PostgreSQL / SQLite")
    print(f"{'':9} {'workers':>7} {'SQLite':>9} {'PostgreSQL':>11} {'ratio':>6}")
    for phase in ("claims/s", "jobs/s"):
        for n in args.workers:
            sq, pg = results[phase, "sqlite", n], results[phase, "postgresql", n]
            print(f"{phase:<9} {n:>7} {sq:>9.1f} {pg:>11.1f} {pg / sq:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
