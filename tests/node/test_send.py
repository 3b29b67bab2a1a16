"""Destinations: C-STORE with every status classified (a warning is stored), rejection vs.
unreachable, folders."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from nodekit import CaptureSCP, free_port
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import evt

from ct2mri_node.config import DicomDestination, FolderDestination
from ct2mri_node.deliver.dispatch import echo, send_series
from ct2mri_node.errors import SendError


def _mr_files(folder: Path, count: int = 3) -> list[Path]:
    """Minimal MR Image Storage files (what the worker sends; content is not checked here)."""
    folder.mkdir()
    series, study = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        ds = pydicom.Dataset()
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.Modality = "MR"
        ds.InstanceNumber = i + 1
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _dest(scp: CaptureSCP, **changes: object) -> DicomDestination:
    return DicomDestination(**{**scp.destination(), **changes})


def test_send_and_echo(capture: CaptureSCP, tmp_path: Path) -> None:
    files = _mr_files(tmp_path / "mr")
    echo(_dest(capture), "CT2MRI")
    report = send_series(_dest(capture), files, "CT2MRI")
    assert report.instances == 3 and report.seconds_to_first is not None
    assert sorted(d.SOPInstanceUID for d in capture.datasets) == sorted(p.stem for p in files)


@pytest.mark.parametrize(("status", "kind", "permanent"), [
    (0xA700, "failure", False),          # out of resources: try again later
    (0xA7FF, "failure", False),
    (0xC000, "failure", True),
    (0xA900, "failure", True),           # data set does not match SOP class
    (0xFE00, "cancel", False),
    (0xFF00, "pending", True),           # not a C-STORE status: not known to be stored
    (0xD123, "unknown status", True),
])
def test_failure_cancel_pending_and_unknown_statuses_are_not_stored(
    tmp_path: Path, status: int, kind: str, permanent: bool
) -> None:
    scp = CaptureSCP(status=status).start()
    try:
        with pytest.raises(SendError, match=f"answered {kind} 0x{status:04X}") as info:
            send_series(_dest(scp), _mr_files(tmp_path / "mr"), "CT2MRI")
        assert info.value.permanent is permanent
        assert len(scp.datasets) == 1            # the send stopped at the first refusal
    finally:
        scp.stop()


class WarningSCP(CaptureSCP):
    """An archive that stores every instance and answers a Warning with a comment and a tag."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.warning = status

    def _on_store(self, event: evt.Event) -> pydicom.Dataset:   # type: ignore[override]
        super()._on_store(event)
        answer = pydicom.Dataset()
        answer.Status = self.warning
        answer.ErrorComment = "coerced PatientName"
        answer.OffendingElement = [0x00100010]
        return answer


@pytest.mark.parametrize("status", [0xB000, 0xB006, 0xB007, 0x0001])
def test_warning_statuses_mean_stored_once_and_are_logged(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ct2mri_node.deliver.send")
    scp = WarningSCP(status).start()
    try:
        files = _mr_files(tmp_path / "mr")
        report = send_series(_dest(scp), files, "CT2MRI")
    finally:
        scp.stop()
    assert (report.instances, report.warnings) == (3, 3)
    assert sorted(d.SOPInstanceUID for d in scp.datasets) == sorted(p.stem for p in files)   # each once
    warned = [r.getMessage() for r in caplog.records if "with warning" in r.getMessage()]
    assert len(warned) == 3 and all(r.levelno == logging.WARNING for r in caplog.records)
    assert f"0x{status:04X}" in warned[0]
    assert "'coerced PatientName'" in warned[0] and "(0010,0010)" in warned[0]
    assert "3 instances at destination archive, 3 of them with a warning status" in caplog.text


def test_a_clean_send_reports_no_warnings(capture: CaptureSCP, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ct2mri_node.deliver.send")
    report = send_series(_dest(capture), _mr_files(tmp_path / "mr"), "CT2MRI")
    assert (report.instances, report.warnings) == (3, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_rejected_association_is_permanent_and_down_is_transient(capture: CaptureSCP, tmp_path: Path) -> None:
    files = _mr_files(tmp_path / "mr")
    with pytest.raises(SendError, match="rejected the association") as rejected:
        send_series(_dest(capture, ae_title="NOTARCHIVE"), files, "CT2MRI")
    assert rejected.value.permanent
    with pytest.raises(SendError, match="cannot connect") as down:
        send_series(_dest(capture, port=free_port()), files, "CT2MRI")
    assert not down.value.permanent
    with pytest.raises(SendError, match="cannot connect"):
        echo(_dest(capture, port=free_port()), "CT2MRI")


def test_folder_destination(tmp_path: Path) -> None:
    files = _mr_files(tmp_path / "mr")
    dest = FolderDestination(name="local", type="folder", path=tmp_path / "outbox")
    assert send_series(dest, files, "CT2MRI").instances == 3
    series = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    written = sorted((tmp_path / "outbox" / series).iterdir())
    assert [p.name for p in written] == sorted(p.name for p in files)
    assert written[0].read_bytes() == (tmp_path / "mr" / written[0].name).read_bytes()


def test_peer_accepting_only_implicit_vr_gets_implicit_vr(tmp_path: Path) -> None:
    """Explicit VR files go to a peer that accepts only Implicit VR Little Endian, re-encoded."""
    scp = CaptureSCP(syntaxes=(ImplicitVRLittleEndian,)).start()
    try:
        files = _mr_files(tmp_path / "mr")
        assert send_series(_dest(scp), files, "CT2MRI").instances == 3
    finally:
        scp.stop()
    assert scp.received_syntaxes == [ImplicitVRLittleEndian] * 3
    sent = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in files}
    for ds in scp.datasets:
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        original = sent[str(ds.SOPInstanceUID)]
        assert (ds.Modality, ds.InstanceNumber) == (original.Modality, original.InstanceNumber)
