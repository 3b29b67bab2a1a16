"""Junk must not starve a good series (issue 21, part 1), over real associations.

A hostile sender stores 200 broken objects, each its own series; then a good 24-slice series is
sent once, with no sender retry, from the same AE and from a second AE. The broken series are
refused at completion by the header checks (never queued, files kept), so the good series is
admitted and delivered exactly once. A single AE that fills its share of the queue with good
series gets 0xA700 while another AE is still admitted.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from nodekit import (
    CaptureSCP,
    free_port,
    http_get,
    make_ct_series,
    node_config,
    store,
    wait_for,
)
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]
from relkit import raw_sending, write_raw

from ct2mri_node.config import NodeConfig
from ct2mri_node.errors import ConfigError
from ct2mri_node.node import Node

OUT_OF_RESOURCES = 0xA700
JUNK = 200
#: kind of broken object -> the reason code its series is refused with (None: refused by C-STORE)
KINDS: dict[str, str | None] = {
    "mr_modality": "not_ct",             # Modality MR in a CT SOP class
    "one_slice": "too_few_slices",       # a one-slice series (series.min_slices is 8)
    "no_position": "missing_geometry",   # ImagePositionPatient missing
    "zero_orientation": "invalid_geometry",   # ImageOrientationPatient all zero
    "mr_sop_class": None,                # an MR SOP Class UID in the data set: 0xA900
    "path_uid": None,                    # SeriesInstanceUID "../../x": 0xC210
}


@pytest.fixture
def archive() -> CaptureSCP:
    capture = CaptureSCP().start()
    yield capture
    capture.stop()


def _junk(template: pydicom.Dataset, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """``JUNK`` broken objects, each its own series, cycling through :data:`KINDS`; and the
    kind of each series UID."""
    folder.mkdir()
    paths, kinds = [], {}
    names = list(KINDS)
    for i in range(JUNK):
        kind = names[i % len(names)]
        ds = copy.deepcopy(template)
        series, instance = f"1.2.826.0.1.3680043.10.999.{i + 1}.1", f"1.2.826.0.1.3680043.10.999.{i + 1}.2"
        with pydicom.config.disable_value_validation():
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series, instance
            if kind == "mr_modality":
                ds.Modality = "MR"
            elif kind == "no_position":
                del ds.ImagePositionPatient
            elif kind == "zero_orientation":
                ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
            elif kind == "mr_sop_class":
                ds.SOPClassUID = MRImageStorage
            elif kind == "path_uid":
                ds.SeriesInstanceUID = series = "../../x"
        paths.append(write_raw(folder / f"junk{i}.dcm", ds, CTImageStorage, instance))
        kinds[series] = kind
    return paths, kinds


def _config(tmp_path: Path, destination: dict[str, object], **limits: int) -> NodeConfig:
    return node_config(tmp_path, destinations=[destination], limits={"max_queued_jobs": 4, **limits},
                       series={"quiet_period_s": 0.5, "min_slices": 8, "restart_hold_s": 0},
                       ops={"http_port": 0})


@pytest.mark.parametrize("good_ae", ["PACS", "OTHER"], ids=["same-ae", "second-ae"])
def test_junk_does_not_starve_a_good_series(
    start_node: Callable[[NodeConfig], Node], archive: CaptureSCP, tmp_path: Path, good_ae: str
) -> None:
    node = start_node(_config(tmp_path, archive.destination()))
    assert node.store is not None and node.watcher is not None
    template = pydicom.dcmread(make_ct_series(tmp_path / "template", seed=5, slices=1, size=16)[0])
    junk, kinds = _junk(template, tmp_path / "junk")
    with raw_sending():
        statuses = store(node.port, junk, calling="PACS")
    assert len(statuses) == JUNK
    accepted = {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
                for p, s in zip(junk, statuses, strict=True) if s == 0}
    assert {kinds[uid] for uid in accepted} == {k for k, code in KINDS.items() if code}   # 4 kinds stored
    assert len(accepted) > 4 * 30   # far more than limits.max_queued_jobs
    # the junk has completed (the moment its jobs would have filled the queue)
    wait_for(lambda: not node.watcher.pending() and node.store.count("received") == 0, 60)

    good = make_ct_series(tmp_path / "good", seed=7, slices=24, size=16)
    assert store(node.port, good, calling=good_ae) == [0] * 24       # sent once, no retry
    good_series = str(pydicom.dcmread(good[0]).SeriesInstanceUID)
    wait_for(lambda: any(j.series_uid == good_series and j.state == "done" for j in node.store.list()), 120)

    mr = Counter(str(ds.SeriesInstanceUID) for ds in archive.datasets)
    assert len(mr) == 1 and list(mr.values()) == [24]               # delivered exactly once
    jobs = {j.series_uid: j for j in node.store.list()}
    assert jobs[good_series].state == "done" and jobs[good_series].calling_ae == good_ae
    for uid in accepted:
        job = jobs[uid]
        assert job.state == "refused", (kinds[uid], job.state, job.reason)
        assert job.reason is not None and job.reason.startswith(f"series refused ({KINDS[kinds[uid]]})")
        assert job.queued_at is None and job.attempts == 0 and job.calling_ae == "PACS"   # never queued
        assert node.spool.instance_paths(uid)                          # its accepted file is kept
    by_reason = Counter(str(KINDS[kinds[uid]]) for uid in accepted)
    for reason, count in by_reason.items():
        assert node.metrics.registry.get_sample_value("ct2mri_series_refused_total", {"reason": reason}) == count
    assert node.metrics.registry.get_sample_value("ct2mri_jobs", {"state": "refused"}) == len(accepted)
    print(f"\njunk: {JUNK} objects, statuses {dict(Counter(hex(s) for s in statuses))}, {len(accepted)} series "
          f"refused at completion ({dict(by_reason)}); good series from {good_ae}: 24 x 0x0000, delivered once")
    assert node.health is not None                                     # the status page lists them
    code, body = http_get(node.health.port, "/?state=refused")
    html = body.decode()
    assert code == 200 and f">refused ({len(accepted)})</a>" in html
    assert html.count('class="s-refused">refused</span>') == min(len(accepted), 50)


def test_one_ae_gets_its_share_while_another_is_admitted(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """max_queued_jobs 4, per-AE share left at its default (half: 2). A dead destination keeps
    the good series queued (each waits 60 s for a send retry)."""
    dead = {"name": "dead", "type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}
    config = _config(tmp_path, dead)
    config = config.model_copy(update={"worker": config.worker.model_copy(
        update={"backoff_initial_s": 60, "backoff_max_s": 60, "poll_interval_s": 0.1})})
    assert config.limits.queued_jobs_per_ae == 2
    node = start_node(config)
    assert node.store is not None
    caplog.set_level(logging.WARNING)
    for seed in (1, 2):
        assert store(node.port, make_ct_series(tmp_path / f"a{seed}", seed=seed, slices=8, size=16),
                     calling="MODALITY") == [0] * 8
    wait_for(lambda: node.store.queued("MODALITY") == 2
             and all(j.reason for j in node.store.list()), 120)   # both translated, waiting to send
    third = make_ct_series(tmp_path / "a3", seed=3, slices=8, size=16)
    assert store(node.port, third, calling="MODALITY") == [OUT_OF_RESOURCES] * 8
    assert "(limits.max_queued_jobs_per_ae)" in caplog.text
    assert node.store.queued() == 2 < config.limits.max_queued_jobs     # the whole queue is not full
    assert store(node.port, make_ct_series(tmp_path / "b", seed=4, slices=8, size=16),
                 calling="OTHER") == [0] * 8                              # another AE is admitted
    wait_for(lambda: node.store.queued("OTHER") == 1, 60)
    assert {j.calling_ae for j in node.store.list()} == {"MODALITY", "OTHER"}


def test_calling_ae_is_known_at_completion_after_a_restart(
    translator: object, tmp_path: Path
) -> None:
    """A series begun before a restart completes after it with its sender's AE on the job (the
    per-AE share needs it), read from the durable job record."""
    config = node_config(tmp_path, series={"quiet_period_s": 0.3, "min_slices": 8, "restart_hold_s": 0})
    ct = make_ct_series(tmp_path / "ct", seed=9, slices=8, size=16)
    first = Node(config, translator=translator)
    first.start()
    try:
        first.watcher.stop()            # the series must not complete before the restart
        assert store(first.port, ct[:4], calling="SCANNER") == [0] * 4
    finally:
        first.stop()
    second = Node(config, translator=translator)
    second.start()
    try:
        assert second.store is not None
        (job,) = wait_for(lambda: [j for j in second.store.list() if j.state not in ("received",)], 60)
        assert job.calling_ae == "SCANNER"
        assert job.state == "refused" and job.reason.startswith("series refused (too_few_slices)")
    finally:
        second.stop()


def test_per_ae_share_above_the_queue_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_queued_jobs_per_ae: 5 is above max_queued_jobs \(4\)"):
        node_config(tmp_path, limits={"max_queued_jobs": 4, "max_queued_jobs_per_ae": 5})
    assert node_config(tmp_path, limits={"max_queued_jobs": 5}).limits.queued_jobs_per_ae == 3   # rounded up

