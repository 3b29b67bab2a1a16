"""Latency of the node: from the last C-STORE of a CT series to the first C-STORE of its MR series.

Starts a real node (loopback, temporary spool) with a capture SCP as its destination, sends a
generated CT series with a pynetdicom SCU and prints the split recorded in the job store:
completion wait, assembly (read + assemble), translation, encoding, writing the MR series,
and sending up to the first stored instance.

    .venv/bin/python benchmarks/latency.py                       # 200 x 512 x 512, tiny model
    .venv/bin/python benchmarks/latency.py --checkpoint bundled --slices 64 --size 256

Targets (issue 3): completion wait <= quiet period + 0.5 s; everything but translation < 2 s
for 200 slices of 512x512. ``--checkpoint tiny`` (default) uses a tiny random model so the
non-model stages dominate; the translation time is then not representative.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from ct2mri_node.config import parse_config
from ct2mri_node.jobs.store import Job
from ct2mri_node.model.testing import make_tiny_checkpoint
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.node import Node
from ct2mri_node.training.ct_dicom import write_ct_series


def _ct(folder: Path, slices: int, size: int) -> list[Path]:
    z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    r = np.hypot(y - size / 2, x - size / 2)
    hu = np.where(r < size * 0.4, 40.0, -1000.0).astype(np.float32)
    hu[(r >= size * 0.32) & (r < size * 0.4)] = 900.0
    return write_ct_series(hu, (2.0, 1.0, 1.0), folder, seed=1)


class _FirstStore:
    def __init__(self) -> None:
        self.first: float | None = None
        self.count = 0
        self.ae = AE(ae_title="ARCHIVE")
        self.ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        if self.first is None:
            self.first = time.time()
        self.count += 1
        return 0x0000


def _send(port: int, paths: list[Path]) -> float:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="CT2MRI")
    if not assoc.is_established:
        sys.exit("could not associate with the node")
    last = 0.0
    for path in paths:
        if assoc.send_c_store(path).Status != 0:
            sys.exit(f"C-STORE of {path.name} failed")
        last = time.time()
    assoc.release()
    return last


def add_series_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`run_series` (series size, model, steps, quiet period)."""
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--checkpoint", default="tiny", help="tiny (random test model), bundled or a folder")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=2.0, help="series.quiet_period_s")


def run_series(root: Path, args: argparse.Namespace,
               config_extra: dict[str, Any] | None = None) -> tuple[Job, float, _FirstStore]:
    """Start a real node whose destination is a capture SCP, send it a generated CT series and
    wait for its job to end; the job, the time of the last CT C-STORE and the capture."""
    ckpt = str(make_tiny_checkpoint(root / "ckpt")) if args.checkpoint == "tiny" else args.checkpoint
    translator = Translator(ckpt, TranslationSettings(steps=args.steps, device="auto"))
    capture = _FirstStore()
    config = parse_config({
        "node": {"ae_title": "CT2MRI", "port": 0, "bind_address": "127.0.0.1"},
        "destinations": [{"name": "archive", "type": "dicom", "ae_title": "ARCHIVE",
                          "host": "127.0.0.1", "port": capture.server.server_address[1]}],
        "spool_dir": "spool", "series": {"quiet_period_s": args.quiet},
        **(config_extra or {}),
    }, root)
    print(f"generating {args.slices} x {args.size} x {args.size} CT ...", flush=True)
    paths = _ct(root / "ct", args.slices, args.size)
    node = Node(config, translator=translator)
    node.start()
    try:
        t0 = time.time()
        last = _send(node.port, paths)
        print(f"sent {len(paths)} CT instances in {last - t0:.2f} s", flush=True)
        assert node.store is not None
        while time.time() - last < 3600:
            jobs = node.store.list()
            if jobs and jobs[0].state in ("done", "failed"):
                break
            time.sleep(0.05)
        (job,) = node.store.list()
    finally:
        node.stop()
        capture.server.shutdown()
    return job, last, capture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_series_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job, last, capture = run_series(Path(tmp), args)
    if job.state != "done":
        sys.exit(f"job failed: {job.reason}")
    _report(job, last, capture.first, args.quiet)
    return 0


def _report(job: Job, last_store: float, first_mr: float | None, quiet: float) -> None:
    t = job.timings
    queued = job.queued_at or 0.0
    wait = queued - (job.last_instance_at or 0.0)
    sending = (t.get("first_store_at", 0.0) - queued) - sum(
        t.get(k, 0.0) for k in ("assembly", "translation", "encoding", "write"))
    rows = [
        ("completion wait", wait),
        ("assembly (read+assemble)", t.get("assembly", 0.0)),
        ("translation", t.get("translation", 0.0)),
        ("encoding", t.get("encoding", 0.0)),
        ("write MR series", t.get("write", 0.0)),
        ("queue + send to 1st store", sending),
    ]
    for name, seconds in rows:
        print(f"  {name:<28} {seconds:8.2f} s")
    total = (first_mr or 0.0) - last_store
    print(f"  {'total (last CT -> 1st MR)':<28} {total:8.2f} s")
    print(f"  {'everything but translation':<28} {total - wait - t.get('translation', 0.0):8.2f} s"
          f"  (target < 2 s); completion wait target <= {quiet + 0.5:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
