"""End to end: from the last CT instance of a series to its whole MR series confirmed at the
destination, split by stage, on a real node (loopback, temporary spool, metrics on).

Where ``latency.py`` stops at the first MR instance, this measures up to the last C-STORE
response of the MR series (what the ``ct2mri_last_ct_to_mr_confirmed_seconds`` metric and the
job's provenance record), and prints each stage's share of it.

    .venv/bin/python benchmarks/end_to_end.py                    # 200 x 512 x 512, tiny model
    .venv/bin/python benchmarks/end_to_end.py --checkpoint bundled --steps 20 --slices 64 --size 256

``--checkpoint tiny`` (default) is a random test model: the translation time is not representative.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import _ct, _FirstStore, _send  # noqa: E402  (same CT, capture SCP and sender)

from ct2mri_node.config import parse_config  # noqa: E402
from ct2mri_node.jobs.store import Job  # noqa: E402
from ct2mri_node.model.testing import make_tiny_checkpoint  # noqa: E402
from ct2mri_node.model.translator import TranslationSettings, Translator  # noqa: E402
from ct2mri_node.node import Node  # noqa: E402

STAGES = ("assembly", "translation", "encoding", "write", "send:archive")


def _run(root: Path, args: argparse.Namespace) -> tuple[Job, float, float]:
    ckpt = str(make_tiny_checkpoint(root / "ckpt")) if args.checkpoint == "tiny" else args.checkpoint
    translator = Translator(ckpt, TranslationSettings(steps=args.steps, device="auto"))
    capture = _FirstStore()
    config = parse_config({
        "node": {"ae_title": "CT2MRI", "port": 0, "bind_address": "127.0.0.1"},
        "destinations": [{"name": "archive", "type": "dicom", "ae_title": "ARCHIVE",
                          "host": "127.0.0.1", "port": capture.server.server_address[1]}],
        "spool_dir": "spool", "series": {"quiet_period_s": args.quiet},
        "worker": {"poll_interval_s": 0.05},
    }, root)
    print(f"generating {args.slices} x {args.size} x {args.size} CT ...", flush=True)
    paths = _ct(root / "ct", args.slices, args.size)
    node = Node(config, translator=translator)
    node.start()
    try:
        start = time.time()
        last = _send(node.port, paths)
        print(f"sent {len(paths)} CT instances in {last - start:.2f} s", flush=True)
        assert node.store is not None
        while True:
            (job,) = node.store.list() or (None,)
            if job is not None and job.state in ("done", "failed"):
                break
            time.sleep(0.05)
        if job.state != "done" or capture.count != len(paths):
            sys.exit(f"job {job.state}: {job.reason}; {capture.count} MR instances arrived")
        done_at = time.time()
    finally:
        node.stop()
        capture.server.shutdown()
    return job, last, done_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--checkpoint", default="tiny", help="tiny (random test model), bundled or a folder")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=2.0, help="series.quiet_period_s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job, last_ct, _ = _run(Path(tmp), args)
    t = job.timings
    total = t["latency:archive"]
    wait = (job.queued_at or 0.0) - (job.last_instance_at or 0.0)
    rows = [("completion wait", wait)] + [(name, t.get(name, 0.0)) for name in STAGES]
    rows.append(("other (queue, bookkeeping)", total - sum(s for _, s in rows)))
    for name, seconds in rows:
        print(f"  {name:<28} {seconds:8.2f} s  {100 * seconds / total:5.1f} %")
    print(f"  {'last CT -> MR confirmed':<28} {total:8.2f} s")
    print(f"ratio non-translation/total: {(total - t.get('translation', 0.0)) / total:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
