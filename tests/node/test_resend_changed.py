"""UIDs that never lie, over real associations: a CT instance re-sent under its old SOP Instance
UID with other pixels makes a new MR series with new UIDs; the original pixels, sent again,
give back the first MR's UIDs and pixels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from nodekit import CaptureSCP, jobs_in, make_ct_series, node_config, send, store, wait_for

from ct2mri_node.config import NodeConfig
from ct2mri_node.jobs.store import Job
from ct2mri_node.node import Node


def _done(node: Node, count: int) -> list[Job]:
    """The node's jobs once there are ``count`` and all have finished (else an empty list)."""
    jobs = jobs_in(node, "done", "failed")
    return jobs if len(jobs) == count else []


def _mr_series(capture: CaptureSCP) -> dict[str, list[pydicom.Dataset]]:
    """The received MR instances by SeriesInstanceUID, each series in InstanceNumber order."""
    with capture.lock:
        received = list(capture.datasets)
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in received:
        series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return {uid: sorted(items, key=lambda d: int(d.InstanceNumber)) for uid, items in series.items()}


def _new_series(capture: CaptureSCP, known: set[str], slices: int) -> list[pydicom.Dataset]:
    """The one complete MR series not among ``known`` (waits for all its instances)."""
    def ready() -> list[pydicom.Dataset]:
        fresh = [d for u, d in _mr_series(capture).items() if u not in known]
        return fresh[0] if len(fresh) == 1 and len(fresh[0]) == slices else []
    return list(wait_for(ready, 60))


def test_changed_pixels_under_the_same_uid_give_a_new_mr_series(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, tmp_path: Path
) -> None:
    node = start_node(node_config(tmp_path, destinations=[capture.destination()]))
    ct = make_ct_series(tmp_path / "ct", seed=21)
    slices = len(ct)

    # 1. the series as sent first
    send(node.port, ct)
    (job,) = wait_for(lambda: _done(node, 1), 120)
    assert job.state == "done", job.reason
    first = _new_series(capture, set(), slices)

    # 2. one instance again, same SOP Instance UID, other pixel data: a new job, new UIDs
    changed = pydicom.dcmread(ct[5])
    pixels = changed.pixel_array.copy()
    pixels[10:20, 10:20] += 50          # 50 HU more in a patch of the body
    changed.PixelData = pixels.tobytes()
    changed_path = tmp_path / "changed.dcm"
    changed.save_as(changed_path, enforce_file_format=True)
    assert store(node.port, [changed_path]) == [0]
    jobs = wait_for(lambda: _done(node, 2), 120)
    assert [j.state for j in jobs] == ["done", "done"], [j.reason for j in jobs]
    second = _new_series(capture, {str(first[0].SeriesInstanceUID)}, slices)
    assert second[0].SeriesInstanceUID != first[0].SeriesInstanceUID
    first_uids = [str(d.SOPInstanceUID) for d in first]
    assert not {str(d.SOPInstanceUID) for d in second} & set(first_uids)   # every instance is new
    sources = [str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in second]
    assert sources == [str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in first]
    assert any(a.PixelData != b.PixelData for a, b in zip(first, second, strict=True))

    # 3. the original series again: only the changed instance differs from the spool, so a
    # third job runs on the original pixels and gives the first MR's UIDs and pixels exactly
    send(node.port, ct)
    jobs = wait_for(lambda: _done(node, 3), 120)
    assert [j.state for j in jobs] == ["done"] * 3, [j.reason for j in jobs]
    by_series = wait_for(lambda: (s := _mr_series(capture)) and
                         len(s[str(first[0].SeriesInstanceUID)]) == 2 * slices and s, 60)
    assert len(by_series) == 2    # no third series: the UIDs of the first came back
    again = by_series[str(first[0].SeriesInstanceUID)][1::2]   # each UID twice, in order
    assert [str(d.SOPInstanceUID) for d in again] == first_uids
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.pixel_array, b.pixel_array)
