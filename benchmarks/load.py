"""Load: N senders at once (dcmtk storescu, one association each) send an S-slice CT series to
``ct2mri-node serve``; every store must succeed and every MR series be delivered. Prints the
aggregate receive rate against one sender alone.

    .venv/bin/python benchmarks/load.py --senders 8 --slices 200 --size 256
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "node"), str(ROOT / "tests" / "reliability")]

import numpy as np  # noqa: E402
from nodekit import free_port  # noqa: E402
from relkit import Serve, job_states, wait_for, write_config  # noqa: E402

from ct2mri_node.model.testing import make_tiny_checkpoint  # noqa: E402
from ct2mri_node.training.ct_dicom import write_ct_series  # noqa: E402

#: Fine spacing keeps the model grid small (the tiny model resamples to 4 mm), so the benchmark
#: measures the node, not CPU translation: 200 x 256 x 256 at 1 x 0.5 x 0.5 mm -> 50 x 32 x 32.
SPACING_MM = (1.0, 0.5, 0.5)


def _ct(folder: Path, seed: int, slices: int, size: int) -> None:
    z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    hu = np.where(np.hypot(y - size / 2, x - size / 2) < size * 0.4, 40.0, -1000.0) + (z % 3) * 5.0
    write_ct_series(hu.astype(np.float32), SPACING_MM, folder, seed=seed)


def _send_all(port: int, folders: list[Path]) -> tuple[float, int]:
    """Start one storescu per folder at once; (seconds until all finished, failed senders)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "PACS", "-aec", "CT2MRI", "+sd", "127.0.0.1", str(port), str(f)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for f in folders]
    failed = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        failed += int(proc.returncode != 0 or "Failed" in out or "E:" in out)
    return time.perf_counter() - start, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ct2mri-load-"))
    ckpt = make_tiny_checkpoint(work / "ckpt")
    port = free_port()
    config = write_config(work, port, ckpt, limits={"min_free_disk_mb": 256})
    folders = []
    for i in range(args.senders + 1):
        _ct(work / f"ct{i}", 900 + i, args.slices, args.size)
        folders.append(work / f"ct{i}")
    serve = Serve(config, work / "serve.log")
    try:
        serve.wait_listening()
        one_s, one_failed = _send_all(port, folders[:1])
        many_s, many_failed = _send_all(port, folders[1:])
        received_s = time.perf_counter()
        wait_for(lambda: (s := job_states(config)) and len(s) == args.senders + 1
                 and all(x in ("done", "failed") for x in s), 3600, 1.0)
        states = job_states(config)
    finally:
        serve.stop()
    delivered = sum(1 for d in (work / "outbox").iterdir() if len(list(d.glob("*.dcm"))) == args.slices)
    one_rate = args.slices / one_s
    many_rate = args.senders * args.slices / many_s
    print(f"{args.size}x{args.size} CT, {args.slices} slices per series")
    print(f"one sender:  {one_rate:7.1f} images/s ({one_s:.1f} s), failed senders {one_failed}")
    print(f"{args.senders} senders:   {many_rate:7.1f} images/s aggregate ({many_s:.1f} s), failed senders {many_failed}"
          f"  -> x{many_rate / one_rate:.2f}")
    print(f"jobs: {states.count('done')} done, {states.count('failed')} failed; MR series delivered complete: "
          f"{delivered}/{args.senders + 1}; translation+delivery after the last store: "
          f"{time.perf_counter() - received_s:.0f} s")
    return 0 if one_failed == many_failed == 0 and delivered == args.senders + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
