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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import add_series_arguments, run_series  # noqa: E402  (same node, CT, capture SCP and sender)

STAGES = ("assembly", "translation", "encoding", "write", "send:archive")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_series_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job, _, capture = run_series(Path(tmp), args, {"worker": {"poll_interval_s": 0.05}})
    if job.state != "done" or capture.count != args.slices:
        sys.exit(f"job {job.state}: {job.reason}; {capture.count} MR instances arrived")
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
