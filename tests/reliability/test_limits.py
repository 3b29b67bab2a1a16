"""Backpressure over real associations: disk watermark, instance size, instances per series,
queued jobs and simultaneous associations each give a clear status and a log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from nodekit import free_port, make_ct_series, node_config, scu, store, wait_for

from ct2mri_node.config import NodeConfig
from ct2mri_node.node import Node

OUT_OF_RESOURCES = 0xA700


def test_free_disk_watermark_answers_out_of_resources(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(node_config(tmp_path, limits={"min_free_disk_mb": 1e12}))   # more than any disk
    caplog.set_level(logging.WARNING)
    ct = make_ct_series(tmp_path / "ct", slices=3, size=16)
    assert store(node.port, ct) == [OUT_OF_RESOURCES] * 3
    assert node.spool.series_uids() == []
    assert "below limits.min_free_disk_mb" in caplog.text


def test_instance_size_limit(start_node: Callable[[NodeConfig], Node], tmp_path: Path,
                             caplog: pytest.LogCaptureFixture) -> None:
    node = start_node(node_config(tmp_path, limits={"max_instance_mb": 0.001}))   # ~1 kB
    caplog.set_level(logging.WARNING)
    assert store(node.port, make_ct_series(tmp_path / "ct", slices=1, size=32)) == [OUT_OF_RESOURCES]
    assert node.spool.series_uids() == []
    assert "exceeds limits.max_instance_mb" in caplog.text


def test_instances_per_series_limit_still_accepts_resends(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(node_config(tmp_path, limits={"max_instances_per_series": 3}))
    caplog.set_level(logging.WARNING)
    ct = make_ct_series(tmp_path / "ct", slices=5, size=16)
    assert store(node.port, ct + ct[:2]) == [0, 0, 0, OUT_OF_RESOURCES, OUT_OF_RESOURCES, 0, 0]
    series = str(pydicom.dcmread(ct[0]).SeriesInstanceUID)
    assert len(node.spool.instance_paths(series)) == 3
    assert "(limits.max_instances_per_series)" in caplog.text


def test_queued_jobs_limit_refuses_new_series_only(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = {"name": "dead", "type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}
    config = node_config(tmp_path, destinations=[dead], limits={"max_queued_jobs": 1},
                         worker={"backoff_initial_s": 60, "backoff_max_s": 60, "poll_interval_s": 0.1})
    node = start_node(config)
    caplog.set_level(logging.WARNING)
    arriving = make_ct_series(tmp_path / "c", seed=3, slices=4, size=16)
    assoc = scu().associate("127.0.0.1", node.port, ae_title="CT2MRI")   # series c still arriving
    assert [int(assoc.send_c_store(p).Status) for p in arriving[:2]] == [0, 0]
    assert store(node.port, make_ct_series(tmp_path / "a", seed=1, slices=8, size=16)) == [0] * 8
    assert node.store is not None
    wait_for(lambda: node.store.count("queued") == 1 and node.store.list()[-1].reason, 60)  # deferred
    second = make_ct_series(tmp_path / "b", seed=2, slices=2, size=16)
    assert store(node.port, second) == [OUT_OF_RESOURCES] * 2
    assert [int(assoc.send_c_store(p).Status) for p in arriving[2:]] == [0, 0]   # not cut off
    assoc.release()
    assert "jobs queued (limits.max_queued_jobs)" in caplog.text


def test_simultaneous_associations_limit(start_node: Callable[[NodeConfig], Node], tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    node = start_node(node_config(tmp_path, node={"ae_title": "CT2MRI", "port": 0, "bind_address": "127.0.0.1",
                                                  "max_associations": 2}))
    caplog.set_level(logging.WARNING)
    ae = scu()
    open_ = [ae.associate("127.0.0.1", node.port, ae_title="CT2MRI") for _ in range(2)]
    assert all(a.is_established for a in open_)
    third = ae.associate("127.0.0.1", node.port, ae_title="CT2MRI")
    assert third.is_rejected
    assert third.acceptor.primitive.result == 0x02 and third.acceptor.primitive.diagnostic == 0x02
    assert "(node.max_associations=2)" in caplog.text      # logged from pynetdicom's rejection event
    assert "rejected association from calling AE 'PACS' at 127.0.0.1" in caplog.text
    for assoc in open_:
        assoc.release()
    # Room again once they close: the server drops its count when its association threads end,
    # a moment after the release reply, so allow a short grace period before calling it a failure.
    deadline = time.monotonic() + 10.0
    while True:
        again = ae.associate("127.0.0.1", node.port, ae_title="CT2MRI")
        if again.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.is_established
    again.release()
