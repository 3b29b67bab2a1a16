"""Hostile input: >= 1000 seeded broken objects over real associations, a good series in the middle.

The node never crashes or hangs (every C-STORE gets a response, C-ECHO works afterwards), each
broken object is refused with a failure status or accepted and then refused at assembly with a
reason (or, when a mutation left it valid, translated), and the good series is delivered.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from fuzzkit import Mutator
from nodekit import make_ct_series, node_config, scu, store, wait_for
from relkit import raw_sending

from ct2mri_node.config import NodeConfig
from ct2mri_node.node import Node

OBJECTS = 1000
BATCH = 200


def _storm(port: int, mutator: Mutator, folder: Path, count: int, tally: collections.Counter[str]) -> None:
    sent = 0
    while sent < count:
        batch = [next(iter(mutator)) for _ in range(min(BATCH, count - sent))]
        paths = []
        for n, broken in enumerate(batch):
            path = folder / f"f{mutator.count}-{n}.dcm"
            path.write_bytes(broken.data)
            paths.append(path)
        statuses = store(port, paths)
        assert len(statuses) == len(batch), "an association ended early: the node dropped it"
        for broken, status in zip(batch, statuses, strict=True):
            tally[f"{broken.kind}:{'accepted' if status == 0 else hex(status)}"] += 1
        for path in paths:
            path.unlink()
        sent += len(batch)


@pytest.mark.slow
def test_fuzz_storm_with_a_good_series_in_the_middle(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    outbox = tmp_path / "outbox"
    node = start_node(node_config(tmp_path, destinations=[{"name": "local", "type": "folder", "path": str(outbox)}],
                                  limits={"max_queued_jobs": 1000}))
    bases = [pydicom.dcmread(p) for s in range(3) for p in make_ct_series(tmp_path / f"b{s}", seed=60 + s,
                                                                         slices=8, size=16)]
    mutator = Mutator(bases, seed=1234)
    work = tmp_path / "fuzz"
    work.mkdir()
    good = make_ct_series(tmp_path / "good", seed=77, slices=10, size=16)
    tally: collections.Counter[str] = collections.Counter()
    with raw_sending():
        _storm(node.port, mutator, work, OBJECTS // 2, tally)
        assert store(node.port, good) == [0] * len(good)
        _storm(node.port, mutator, work, OBJECTS - OBJECTS // 2, tally)
    assoc = scu().associate("127.0.0.1", node.port, ae_title="CT2MRI")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    assert node.store is not None
    wait_for(lambda: not node.watcher.pending() and node.store.count("received", "queued", "translating",
                                                                       "sending") == 0, 120, 0.2)
    jobs = node.store.list()
    assert all(j.state in ("done", "failed", "refused") and (j.state == "done" or j.reason) for j in jobs)
    good_series = str(pydicom.dcmread(good[0]).SeriesInstanceUID)
    (good_job,) = [j for j in jobs if j.series_uid == good_series]
    assert good_job.state == "done", good_job.reason
    refused = sum(v for k, v in tally.items() if not k.endswith(":accepted"))
    accepted = sum(tally.values()) - refused
    print(f"\nfuzz: {sum(tally.values())} broken objects, {refused} refused with a failure status, "
          f"{accepted} accepted; jobs: {collections.Counter(j.state for j in jobs)}")
    print("by kind:", dict(sorted(tally.items())))
    assert sum(tally.values()) >= 1000 and refused > 0
    assert "Traceback" not in caplog.text
