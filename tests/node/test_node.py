"""The whole node over real associations: CT in, MR series out to a capture SCP and a folder.

The round trip and the retry also run against dcmtk's ``storescp`` as the archive (in a private
network namespace, dcmtk_peer.py), so that a second DICOM implementation checks what we send."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from nodekit import (
    CaptureSCP,
    jobs_in,
    make_ct_series,
    node_config,
    private_network_problem,
    run_in_private_network,
    send,
    wait_for,
)

from ct2mri_node.config import NodeConfig
from ct2mri_node.model.translator import Translator
from ct2mri_node.node import Node
from ct2mri_node.receive.spool import header_from_dataset


def check_mr_series(mr: list[pydicom.Dataset], ct_paths: list[Path]) -> None:
    """The MR series sits on the CT grid, in the CT study and frame, references the CT."""
    ct = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(p) for p in ct_paths)}
    first = next(iter(ct.values()))
    assert len(mr) == len(ct)
    assert len({str(d.SeriesInstanceUID) for d in mr}) == 1
    for ds in mr:
        assert ds.Modality == "MR" and ds.SyntheticData == "YES"
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
        (source,) = ds.SourceImageSequence
        src = ct[str(source.ReferencedSOPInstanceUID)]
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([float(v) for v in src.ImagePositionPatient])
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx([float(v) for v in src.ImageOrientationPatient])
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([float(v) for v in src.PixelSpacing])
        assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)


def test_two_series_at_once_one_over_two_associations(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    config = node_config(
        tmp_path, calling_aes=[{"ae_title": "PACS", "host": "127.0.0.1"}],
        destinations=[capture.destination(), {"name": "local", "type": "folder", "path": str(outbox)}],
    )
    node = start_node(config)
    a = make_ct_series(tmp_path / "a", seed=1)
    b = make_ct_series(tmp_path / "b", seed=2)
    threads = [
        threading.Thread(target=send, args=(node.port, a[:6])),
        threading.Thread(target=send, args=(node.port, b)),
    ]
    for t in threads:
        t.start()
    send(node.port, a[6:])      # series a's second association, while b is still arriving
    for t in threads:
        t.join()
    jobs = wait_for(lambda: jobs_in(node, "done", "failed"), 120)
    assert [j.state for j in jobs] == ["done", "done"], [j.reason for j in jobs]
    assert len(jobs) == 2   # one job per series, though a came over two associations
    for job in jobs:
        assert {"assembly", "translation", "encoding", "send:archive", "first_store_at"} <= set(job.timings)
        assert [d.state for d in job.deliveries] == ["done", "done"]
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for ds in capture.datasets:
        by_series.setdefault(str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID), []).append(ds)
    ct_series = {str(pydicom.dcmread(p[0]).SeriesInstanceUID): p for p in (a, b)}
    assert set(by_series) == set(ct_series)
    for uid, mr in by_series.items():
        check_mr_series(mr, ct_series[uid])
    assert sum(len(list(d.iterdir())) for d in outbox.iterdir()) == 24


def test_destination_down_at_first_gets_series_once_up(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path
) -> None:
    late = CaptureSCP()              # port chosen, not listening yet
    config = node_config(tmp_path, destinations=[late.destination()])
    node = start_node(config)
    ct = make_ct_series(tmp_path / "ct", seed=3)
    send(node.port, ct)
    assert node.store is not None
    (job,) = wait_for(lambda: [j for j in node.store.list() if "cannot connect" in (j.reason or "")], 60)
    assert job.state in ("queued", "translating", "sending")
    assert [d.state for d in job.deliveries] == ["pending"]
    late.start()
    try:
        (job,) = wait_for(lambda: jobs_in(node, "done", "failed"), 60)
        assert job.state == "done" and job.attempts >= 2
        check_mr_series(late.datasets, ct)
    finally:
        late.stop()


DCMTK_PEER = Path(__file__).with_name("dcmtk_peer.py")


def _storescp_received(work: Path) -> list[pydicom.Dataset]:
    """Every instance storescp wrote (one file per C-STORE it answered); none received twice;
    its log has no error."""
    received = [pydicom.dcmread(p) for p in sorted((work / "archive").iterdir())]
    twice = [uid for uid, n in Counter(str(d.SOPInstanceUID) for d in received).items() if n > 1]
    assert not twice, f"storescp received {len(twice)} instance(s) more than once"
    errors = [line for line in (work / "storescp.log").read_text().splitlines() if line.startswith(("E:", "F:"))]
    assert not errors, errors
    return received


def test_two_series_round_trip_to_dcmtk_storescp(
    tiny_checkpoint: Path, tmp_path: Path, require_peer: Callable[[bool, str], None]
) -> None:
    reason = private_network_problem("storescp")
    require_peer(reason is None, reason or "")   # under CI a missing dcmtk or namespace fails
    report = run_in_private_network(DCMTK_PEER, "roundtrip", str(tmp_path), str(tiny_checkpoint))
    assert [(j["state"], j["deliveries"]) for j in report["jobs"]] == \
        [("done", {"archive": "done", "local": "done"})] * 2, report["jobs"]
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for ds in _storescp_received(tmp_path):
        by_series.setdefault(str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID), []).append(ds)
    ct_series = {str(pydicom.dcmread(p[0]).SeriesInstanceUID): p
                 for p in (sorted((tmp_path / name).glob("*.dcm")) for name in ("ct-a", "ct-b"))}
    assert set(by_series) == set(ct_series)
    for uid, mr in by_series.items():
        check_mr_series(mr, ct_series[uid])


def test_storescp_down_at_first_gets_series_once_up(
    tiny_checkpoint: Path, tmp_path: Path, require_peer: Callable[[bool, str], None]
) -> None:
    reason = private_network_problem("storescp")
    require_peer(reason is None, reason or "")
    report = run_in_private_network(DCMTK_PEER, "retry", str(tmp_path), str(tiny_checkpoint))
    (job,) = report["jobs"]
    assert job["state"] == "done" and job["attempts"] >= 2, job
    check_mr_series(_storescp_received(tmp_path), sorted((tmp_path / "ct").glob("*.dcm")))


def test_rejecting_destination_and_refused_series_fail_with_reason(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, tmp_path: Path
) -> None:
    config = node_config(tmp_path, destinations=[{**capture.destination(), "ae_title": "WRONGAE"}])
    node = start_node(config)
    send(node.port, make_ct_series(tmp_path / "ok", seed=4))
    gap = make_ct_series(tmp_path / "gap", seed=5)
    send(node.port, gap[:5] + gap[6:])            # a missing slice: refused at completion, never queued
    jobs = wait_for(lambda: (js := jobs_in(node, "done", "failed", "refused")) and len(js) == 2 and js, 60)
    assert sorted(j.state for j in jobs) == ["failed", "refused"]
    rejected, refused = sorted(jobs, key=lambda j: "rejected" not in (j.reason or ""))
    assert (rejected.state, refused.state) == ("failed", "refused") and refused.queued_at is None
    assert "rejected the association" in (rejected.reason or "") and rejected.attempts == 1
    assert rejected.translated and not capture.datasets
    assert not refused.translated and "slice(s) missing" in (refused.reason or "")


def test_restart_picks_up_spooled_series_and_interrupted_jobs(
    start_node: Callable[[NodeConfig], Node], translator: Translator, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    config = node_config(tmp_path, destinations=[{"name": "local", "type": "folder", "path": str(outbox)}])
    # A series that reached the spool before a crash, with no job record.
    from ct2mri_node.jobs.store import JobStore
    from ct2mri_node.receive.spool import Spool

    spool = Spool(config.spool_dir)
    spool.create()
    ct = make_ct_series(tmp_path / "ct", seed=6)
    for path in ct:
        ds = pydicom.dcmread(path)
        spool.store(path.read_bytes(), header_from_dataset(ds))
    # ... and a job interrupted mid-translation.
    other = make_ct_series(tmp_path / "ct2", seed=7)
    for path in other:
        spool.store(path.read_bytes(), header_from_dataset(pydicom.dcmread(path)))
    store = JobStore(spool.db_path)
    other_header = header_from_dataset(pydicom.dcmread(other[0]))
    store.enqueue(other_header.series_uid, other_header.study_uid)
    assert store.claim() is not None
    node = start_node(config)
    jobs = wait_for(lambda: (js := jobs_in(node, "done", "failed")) and len(js) == 2 and js, 60)
    assert [j.state for j in jobs] == ["done", "done"], [j.reason for j in jobs]
    assert len(list(outbox.iterdir())) == 2
