"""Retries that help and stop: jittered capped backoff; a dead archive does not hold up the
others; a rejecting archive is contacted once; ``retry`` makes failed destinations pending; an
archive answering a warning status stored the instance and is not sent it again."""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from nodekit import CaptureSCP, make_ct_series, node_config, store, wait_for

from ct2mri_node.config import NodeConfig
from ct2mri_node.jobs.outputs import output_dir
from ct2mri_node.jobs.worker import backoff_s
from ct2mri_node.node import Node


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    rng = random.Random(3)
    delays = [backoff_s(a, 1.0, 2.0, 10.0, 0.2, rng) for a in range(1, 8)]
    assert 0.8 <= delays[0] <= 1.2 and 3.2 <= delays[2] <= 4.8
    assert max(delays) <= 10.0 and delays[-1] == 10.0
    assert len({backoff_s(3, 1.0, 2.0, 10.0, 0.2, rng) for _ in range(20)}) > 1   # jitter spreads retries
    assert backoff_s(3, 1.0, 2.0, 10.0) == 4.0


def test_dead_and_rejecting_archives_do_not_hold_up_the_others(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, tmp_path: Path
) -> None:
    late = CaptureSCP(ae_title="LATE")      # down at first, up later
    rejecting = {**capture.destination("rejecting"), "ae_title": "WRONGAE"}
    outbox = tmp_path / "outbox"
    config = node_config(tmp_path, destinations=[
        capture.destination(), late.destination("late"), rejecting,
        {"name": "local", "type": "folder", "path": str(outbox)}])
    node = start_node(config)
    assert store(node.port, make_ct_series(tmp_path / "ct", seed=9, slices=8, size=16)) == [0] * 8
    assert node.store is not None
    job = wait_for(lambda: [j for j in node.store.list() if j.attempts >= 3], 60)[0]
    by_name = {d.destination: d for d in node.store.get(job.id).deliveries}
    assert by_name["archive"].state == by_name["local"].state == "done"
    assert by_name["archive"].attempts == 1 and len(capture.datasets) == 8     # sent once, not again
    assert by_name["rejecting"].state == "failed" and by_name["rejecting"].attempts == 1   # not hammered
    assert by_name["late"].state == "pending" and by_name["late"].attempts >= 2
    late.start()
    try:
        final = wait_for(lambda: [j for j in node.store.list() if j.state in ("done", "failed")], 60)[0]
    finally:
        late.stop()
    assert final.state == "failed" and "rejected the association" in (final.reason or "")
    assert len({str(d.SOPInstanceUID) for d in late.datasets}) == 8 == len(late.datasets)
    again = node.store.retry(final.id)
    assert {d.destination: d.state for d in again.deliveries}["rejecting"] == "pending"
    assert wait_for(lambda: node.store.get(final.id).state == "failed" and
                    {d.destination: d.attempts for d in node.store.get(final.id).deliveries}["rejecting"] == 1, 60)
    assert len(capture.datasets) == 8 and len(late.datasets) == 8      # done destinations skipped


def test_a_translated_job_whose_mr_series_is_gone_is_translated_again(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = start_node(node_config(tmp_path, destinations=[capture.destination()]))
    assert store(node.port, make_ct_series(tmp_path / "ct", seed=12, slices=8, size=16)) == [0] * 8
    assert node.store is not None
    job = wait_for(lambda: [j for j in node.store.list() if j.state == "done"], 60)[0]
    output = output_dir(node.spool, job.id)
    names = sorted(p.name for p in output.iterdir())
    shutil.rmtree(output)                     # lost (a crash before the folder was synced, a hand)
    node.store.retry(job.id)
    node.worker.wake()
    again = wait_for(lambda: [j for j in node.store.list() if j.state in ("done", "failed") and j.attempts == 1
                              and j.updated_at > job.updated_at], 60)[0]
    assert again.state == "done", again.reason
    assert sorted(p.name for p in output.iterdir()) == names   # the same MR series, made again
    assert "MR series is missing from the spool; translating again" in caplog.text
    assert len(capture.datasets) == 8                           # the archive already had it: not re-sent


def test_an_archive_answering_warnings_gets_each_instance_once_and_the_job_is_done(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Warning 0xB000 (coercion) means stored: the delivery is done after one attempt, every MR
    instance reached the archive exactly once, and each warning is in the log."""
    caplog.set_level(logging.WARNING, logger="ct2mri_node.deliver.send")
    warning = CaptureSCP(ae_title="COERCING", status=0xB000).start()
    try:
        node = start_node(node_config(tmp_path, destinations=[warning.destination("coercing")]))
        assert store(node.port, make_ct_series(tmp_path / "ct", seed=21, slices=8, size=16)) == [0] * 8
        assert node.store is not None
        job = wait_for(lambda: [j for j in node.store.list() if j.state in ("done", "failed")], 60)[0]
        assert job.state == "done", job.reason
        (delivery,) = node.store.get(job.id).deliveries
        assert (delivery.destination, delivery.state, delivery.attempts) == ("coercing", "done", 1)
        uids = [str(d.SOPInstanceUID) for d in warning.datasets]
        assert len(uids) == len(set(uids)) == 8                 # each MR instance once, none re-sent
    finally:
        warning.stop()
    warned = [r for r in caplog.records if "with warning 0xB000 (Coercion of Data Elements)" in r.getMessage()]
    assert len(warned) == 8 and all(r.levelno == logging.WARNING for r in warned)
    assert "stored 8 instances at destination coercing, 8 of them with a warning status" in caplog.text
