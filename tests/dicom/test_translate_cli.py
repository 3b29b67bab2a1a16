"""``ct2mri-node translate`` as a subprocess on a generated CT series with a tiny checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ct2mri_node.training.ct_dicom import ct_series_datasets, write_ct_series, write_datasets
from dicom_checks import assert_valid_files, phantom_hu

SPACING = (3.0, 2.0, 2.0)


def _translate(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ct2mri_node", "translate", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(phantom_hu(20, 40, 40), SPACING, folder, shuffle_names=True,
                    orientation=(-1, 0, 0, 0, 1, 0), patient_position="FFS", origin=(30, -40, 60))
    return folder


def _read(folder: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: d.InstanceNumber)


def test_translate_writes_mr_on_the_ct_grid(tmp_path: Path, tiny_checkpoint: Path, ct_dir: Path) -> None:
    first, second = tmp_path / "mr1", tmp_path / "mr2"
    for out in (first, second):
        proc = _translate("--input", ct_dir, "--output", out, "--checkpoint", tiny_checkpoint,
                          "--steps", 2, "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
    assert "synthetic MR series 2.25." in proc.stdout and "20 instances" in proc.stdout
    mr = _read(first)
    assert len(mr) == 20
    assert_valid_files(sorted(first.glob("*.dcm"))[:3])
    cts = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in ct_dir.iterdir())}
    for ds in mr:
        ct = cts[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.ImagePositionPatient == ct.ImagePositionPatient
        assert ds.ImageOrientationPatient == ct.ImageOrientationPatient
        assert ds.PixelSpacing == ct.PixelSpacing
        assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
        assert ds.StudyInstanceUID == ct.StudyInstanceUID
        assert ds.SyntheticData == "YES"
        assert ds.pixel_array.shape == (40, 40) and ds.pixel_array.max() <= 4095
    z = [float(ds.ImagePositionPatient[2]) for ds in mr]
    assert np.allclose(np.diff(z), -3.0)  # feet first: ascending along the normal (0, 0, -1)
    again = _read(second)
    assert [d.SOPInstanceUID for d in mr] == [d.SOPInstanceUID for d in again]
    assert all(np.array_equal(a.pixel_array, b.pixel_array) for a, b in zip(mr, again, strict=True))


def test_unusable_input_exits_non_zero_with_a_message(tmp_path: Path, tiny_checkpoint: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _translate("--input", empty, "--output", tmp_path / "o1", "--checkpoint", tiny_checkpoint)
    assert proc.returncode == 3 and "is empty" in proc.stderr
    datasets = ct_series_datasets(phantom_hu(12, 16, 16), SPACING)
    del datasets[5]
    write_datasets(datasets, tmp_path / "gap")
    proc = _translate("--input", tmp_path / "gap", "--output", tmp_path / "o2", "--checkpoint", tiny_checkpoint)
    assert proc.returncode == 3 and "slice(s) missing" in proc.stderr
    assert not (tmp_path / "o2").exists()


def test_missing_checkpoint_exits_non_zero(tmp_path: Path, ct_dir: Path) -> None:
    proc = _translate("--input", ct_dir, "--output", tmp_path / "o", "--checkpoint", tmp_path / "none")
    assert proc.returncode == 4 and "checkpoint" in proc.stderr


def test_translate_writes_the_uncertainty_map_and_qa_image(
        tmp_path: Path, tiny_checkpoint: Path, ct_dir: Path) -> None:
    out = tmp_path / "mr"
    proc = _translate("--input", ct_dir, "--output", out, "--checkpoint", tiny_checkpoint, "--steps", 2,
                      "--samples", 2, "--uncertainty-map", "--qa-capture", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    files = {p.name[:2]: p for p in sorted(out.glob("*.dcm"))}
    assert {"MR", "PM", "SC"} <= set(files)
    pm, sc = pydicom.dcmread(files["PM"]), pydicom.dcmread(files["SC"])
    mr = pydicom.dcmread(files["MR"])
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert pm.StudyInstanceUID == sc.StudyInstanceUID == mr.StudyInstanceUID
    assert pm.FrameOfReferenceUID == mr.FrameOfReferenceUID
    assert pm.SyntheticData == sc.SyntheticData == "YES"
    assert_valid_files([files["PM"], files["SC"]])
    assert "QA - SYNTHETIC MR" in proc.stdout


def test_uncertainty_map_needs_samples(tmp_path: Path, tiny_checkpoint: Path, ct_dir: Path) -> None:
    proc = _translate("--input", ct_dir, "--output", tmp_path / "o", "--checkpoint", tiny_checkpoint,
                      "--uncertainty-map")
    assert proc.returncode == 2 and "--samples >= 2" in proc.stderr
    assert not (tmp_path / "o").exists()
