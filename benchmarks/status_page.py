"""Status page with many jobs: the first list page costs about the same with 1,000 jobs as with
100,000 (paged, indexed queries), for all jobs and for a state filter.

    .venv/bin/python benchmarks/status_page.py --jobs 100000

Prints the median time of ``GET /`` and ``GET /?state=failed`` at 1,000 jobs (full pages) and at ``--jobs``,
and their ratio (about 1 when paging works; a full scan would grow with the job count).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from ct2mri_node.config import parse_config
from ct2mri_node.jobs.store import JobStore
from ct2mri_node.ops.health import HealthServer
from ct2mri_node.ops.metrics import NodeMetrics


def fill(store: JobStore, start: int, stop: int) -> None:
    """Jobs ``start+1 .. stop`` as finished records, one in ten failed."""
    now = time.time()
    rows = [(f"1.2.826.0.1.3680043.8.498.{i}", "1.2.826.0.1.3680043.8.498.1", "failed" if i % 10 == 0 else "done",
             now, now) for i in range(start + 1, stop + 1)]
    with store.transaction() as conn:
        conn.executemany("INSERT INTO jobs (series_uid, study_uid, state, created_at, updated_at) VALUES (?,?,?,?,?)",
                         rows)


def median_get(port: int, path: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as rsp:
            rsp.read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the large store (default 100000)")
    parser.add_argument("--repeat", type=int, default=15, help="requests per measurement (default 15)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({"spool_dir": "spool", "ops": {"http_port": 0}}, Path(tmp), "benchmark")
        (config.spool_dir / "output").mkdir(parents=True)
        store = JobStore(config.spool_dir / "jobs.sqlite3")
        server = HealthServer(config, NodeMetrics(receives=False, translates=False), None, store)
        server.start()
        try:
            fill(store, 0, 1000)
            small = {p: median_get(server.port, p, args.repeat) for p in ("/", "/?state=failed")}
            fill(store, 1000, args.jobs)
            large = {p: median_get(server.port, p, args.repeat) for p in ("/", "/?state=failed")}
        finally:
            server.stop()
    for path in small:
        print(f"GET {path:16s} 1000 jobs {1000 * small[path]:7.1f} ms   {args.jobs} jobs "
              f"{1000 * large[path]:7.1f} ms   ratio {large[path] / small[path]:.2f}")


if __name__ == "__main__":
    main()
