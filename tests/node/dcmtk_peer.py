"""Inside a private network namespace (loopback only): dcmtk's ``storescp`` as the archive the
node sends to, so that a second DICOM implementation checks what our pynetdicom sender sends.

Run by test_node.py through nodekit's ``run_in_private_network`` as
``python THIS SCENARIO WORKDIR CKPT``; storescp cannot bind to loopback only, hence the
namespace. Scenarios (the twins of test_node.py's pynetdicom tests):

- ``roundtrip``: two CT series at once, one over two associations, to storescp and a folder;
- ``retry``: storescp down when the MR series is ready, started once the node has failed to
  connect; the node retries and delivers.

storescp writes every instance it receives to ``WORKDIR/archive`` under a unique file name
(``+uf``), so an instance received twice is two files. Prints the node's jobs as JSON; the test
reads the files. Fixed ports are fine: the namespace is ours.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodekit import jobs_in, make_ct_series, send, wait_for

from ct2mri_node.config import parse_config
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.node import Node

ARCHIVE, NODE = 4104, 11112


def start_storescp(work: Path) -> subprocess.Popen[bytes]:
    """storescp as AE ARCHIVE on ARCHIVE, every received instance a new file in work/archive."""
    out = work / "archive"
    out.mkdir(exist_ok=True)
    log = (work / "storescp.log").open("ab")
    proc = subprocess.Popen(["storescp", "-v", "-aet", "ARCHIVE", "-od", str(out), "+uf", "-ta", "10",
                             "-ts", "10", str(ARCHIVE)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TCP_NODELAY": "1"})
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", ARCHIVE), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"storescp did not start; see {work / 'storescp.log'}")


def start_node(work: Path, checkpoint: str) -> Node:
    config = parse_config({
        "node": {"ae_title": "CT2MRI", "port": NODE, "bind_address": "127.0.0.1"},
        "calling_aes": [{"ae_title": "PACS", "host": "127.0.0.1"}],
        "destinations": [
            {"name": "archive", "type": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": ARCHIVE,
             "timeout_s": 10},
            {"name": "local", "type": "folder", "path": "outbox"},
        ],
        "spool_dir": "spool", "series": {"quiet_period_s": 0.5, "min_slices": 8, "restart_hold_s": 0},
        "worker": {"max_attempts": 20, "backoff_initial_s": 0.3, "backoff_max_s": 1.0, "poll_interval_s": 0.1},
        "model": {"checkpoint": checkpoint, "device": "cpu", "steps": 2},
    }, work, "dcmtk")
    node = Node(config, translator=Translator(checkpoint, TranslationSettings(steps=2, device="cpu")))
    node.start()
    return node


def roundtrip(work: Path, node: Node, peers: list[subprocess.Popen[bytes]]) -> list[Any]:
    a, b = make_ct_series(work / "ct-a", seed=1), make_ct_series(work / "ct-b", seed=2)
    threads = [threading.Thread(target=send, args=(node.port, a[:6])),
               threading.Thread(target=send, args=(node.port, b))]
    for t in threads:
        t.start()
    send(node.port, a[6:])      # series a's second association, while b is still arriving
    for t in threads:
        t.join()
    return list(wait_for(lambda: (js := jobs_in(node, "done", "failed")) and len(js) == 2 and js, 120))


def retry(work: Path, node: Node, peers: list[subprocess.Popen[bytes]]) -> list[Any]:
    send(node.port, make_ct_series(work / "ct", seed=3))
    assert node.store is not None
    wait_for(lambda: [j for j in node.store.list() if "cannot connect" in (j.reason or "")], 60)
    peers.append(start_storescp(work))         # the archive comes up: the next attempt delivers
    return list(wait_for(lambda: jobs_in(node, "done", "failed"), 60))


def main() -> int:
    scenario, work, checkpoint = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    peers: list[subprocess.Popen[bytes]] = []
    node = None
    try:
        if scenario == "roundtrip":
            peers.append(start_storescp(work))
        node = start_node(work, checkpoint)
        jobs = {"roundtrip": roundtrip, "retry": retry}[scenario](work, node, peers)
        print(json.dumps({"jobs": [{"state": j.state, "reason": j.reason, "attempts": j.attempts,
                                    "deliveries": {d.destination: d.state for d in j.deliveries}}
                                   for j in jobs]}))
    finally:
        if node is not None:
            node.stop()
        for peer in peers:
            peer.terminate()
            peer.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
