"""Chaos soak: kill -9 ``ct2mri-node serve`` at random moments while stubborn senders deliver CT
series, restart it each time, and count per series: delivered once / lost / duplicated.

    .venv/bin/python benchmarks/chaos.py --kills 20 --series 6

Destinations: a capture SCP in this process (records every SOP Instance UID it is sent) and a
folder. A series counts as delivered when both hold exactly the MR series an uninterrupted run
produces; duplicated when either holds another MR series for it; lost when one lacks it.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "node"), str(ROOT / "tests" / "reliability")]

from nodekit import CaptureSCP, free_port, make_ct_series  # noqa: E402
from relkit import Serve, expected_mr_uids, folder_uids, job_states, send_until_acked, wait_for, write_config  # noqa: E402

from ct2mri_node.model.testing import make_tiny_checkpoint  # noqa: E402
from ct2mri_node.model.translator import TranslationSettings, Translator  # noqa: E402


def _senders(port: int, series: list[list[Path]], gap_s: float) -> threading.Thread:
    def run() -> None:
        for paths in series:
            send_until_acked(port, paths, timeout_s=600)
            time.sleep(gap_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--series", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ct2mri-chaos-"))
    ckpt = make_tiny_checkpoint(work / "ckpt")
    translator = Translator(ckpt, TranslationSettings(steps=2, device="cpu"))
    capture = CaptureSCP().start()
    port = free_port()
    config = write_config(work, port, ckpt, destinations=[
        capture.destination(), {"name": "local", "type": "folder", "path": "outbox"}])
    cts = [make_ct_series(work / f"ct{i}", seed=500 + i, slices=12) for i in range(args.series)]
    expected = [expected_mr_uids(ct, translator) for ct in cts]
    log = work / "serve.log"
    serve = Serve(config, log)
    serve.wait_listening()
    sender = _senders(port, cts, 0.5)
    for kill in range(args.kills):
        time.sleep(rng.uniform(0.2, 3.0))
        serve.proc.kill()        # SIGKILL at a random moment
        serve.stop()
        print(f"kill {kill + 1}/{args.kills}: jobs {job_states(config)}", flush=True)
        serve = Serve(config, log)
        serve.wait_listening()
    sender.join(timeout=600)
    wait_for(lambda: (s := job_states(config)) and all(x in ("done", "failed") for x in s), 600, 0.5)
    time.sleep(2)
    serve.stop()
    capture.stop()
    delivered = lost = duplicated = 0
    folders = folder_uids(work / "outbox")
    got_series = {str(d.SeriesInstanceUID) for d in capture.datasets}
    for series_uid, uids in expected:
        at_capture = {str(d.SOPInstanceUID) for d in capture.datasets if str(d.SeriesInstanceUID) == series_uid}
        at_folder = {n.split("_", 1)[1][:-4] for n in folders.get(series_uid, [])}
        if at_capture == uids and at_folder == uids:
            delivered += 1
        else:
            lost += 1
    expected_series = {s for s, _ in expected}
    duplicated = len(got_series - expected_series) + len(set(folders) - expected_series)
    resent = len(capture.datasets) - len({str(d.SOPInstanceUID) for d in capture.datasets})
    print(f"kills: {args.kills}  series: {args.series}  delivered: {delivered}  lost: {lost}  "
          f"duplicated: {duplicated}  (instances re-sent with the same UIDs: {resent}; jobs {job_states(config)})")
    print(f"work folder: {work}")
    return 0 if lost == 0 and duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
