"""Scale-out throughput: series per minute with 1, 2 and 4 worker processes on one Redis broker.

    .venv/bin/python benchmarks/scale.py [--workers 1 2 4] [--series 8] [--steps 8] [--threads 1]

For each pool size: a fresh redis-server and spool, one ``serve --role receiver`` and N
``ct2mri-node worker`` processes (CPU, tiny random model, ``--threads`` torch threads each). All
series are sent at once; throughput is series / (last job finished - first job queued), read
from the job store, so sending and series completion are left out. Printed as a ratio to one
worker. On a machine with C cores expect at most about C / threads times one worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "node"), str(ROOT / "tests" / "reliability"), str(ROOT / "tests" / "scale")]

from nodekit import CaptureSCP, free_port, make_ct_series  # noqa: E402
from relkit import send_until_acked, wait_for  # noqa: E402
from scalekit import Redis, receiver, scale_config, worker  # noqa: E402

from ct2mri_node.commands.status import open_store  # noqa: E402
from ct2mri_node.model.testing import make_tiny_checkpoint  # noqa: E402


def _send_all(port: int, series: list[list[Path]]) -> None:
    threads = [threading.Thread(target=send_until_acked, args=(port, ct, 600), daemon=True) for ct in series]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_pool(work: Path, workers: int, series: list[list[Path]], ckpt: Path, steps: int) -> float:
    """Series per minute of a pool of ``workers`` processes."""
    work.mkdir(parents=True)
    broker = Redis(work / "redis").start()
    capture = CaptureSCP().start()
    port = free_port()
    config = scale_config(work, port, ckpt, broker.url, destinations=[capture.destination()],
                          model={"checkpoint": str(ckpt), "device": "cpu", "steps": steps},
                          queue={"lease_s": 30.0, "republish_after_s": 60.0})
    procs = [receiver(config, work / "receiver.log")]
    procs += [worker(config, work / f"worker{i}.log") for i in range(workers)]
    try:
        for proc in procs:
            proc.wait_ready(300)
        _send_all(port, series)
        store = open_store(config)
        wait_for(lambda: [j.state for j in store.list()] == ["done"] * len(series), 3600, 0.2)
        jobs = store.list()
    finally:
        for proc in procs:
            proc.stop()
        capture.stop()
        broker.stop()
    start = min(j.queued_at or j.created_at for j in jobs)
    end = max(j.finished_at or 0.0 for j in jobs)
    return len(jobs) / (end - start) * 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (OMP_NUM_THREADS)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="ct2mri-scale-"))
    ckpt = make_tiny_checkpoint(work / "ckpt")
    series = [make_ct_series(work / f"ct{i}", seed=900 + i, slices=args.slices, size=args.size)
              for i in range(args.series)]
    print(f"{args.series} series of {args.slices}x{args.size}x{args.size}, tiny model, {args.steps} steps, "
          f"{args.threads} thread(s) per worker, {os.cpu_count()} CPU cores")
    base = None
    for n in args.workers:
        t0 = time.monotonic()
        rate = run_pool(work / f"pool{n}", n, series, ckpt, args.steps)
        base = base or rate
        print(f"{n} worker(s): {rate:6.1f} series/min  x{rate / base:.2f} of one worker"
              f"  (run {time.monotonic() - t0:.0f} s)", flush=True)
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
