"""Negative controls of the conformance checks every writer test relies on (dicom_checks.py):
dciodvfy must report a broken object, or a dciodvfy that runs but checks nothing would pass
the arrival cases, the encoder, the companions, the CT writer and the translate CLI alike."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicom_checks import (
    SPACING,
    WHEN,
    assert_valid_files,
    ct_volume,
    dciodvfy_report,
    phantom_hu,
    translation_result,
)
from pydicom.dataset import Dataset

from ct2mri_node.deliver.encode import EncodeOptions, encode_series
from ct2mri_node.training.ct_dicom import write_ct_series


def _mr(tmp_path: Path) -> Dataset:
    hu = phantom_hu(8, 8, 8)
    return encode_series(ct_volume(tmp_path, hu), translation_result(hu.shape),
                         EncodeOptions(contribution_datetime=WHEN))[0]


def _ct(tmp_path: Path) -> Dataset:
    return pydicom.dcmread(write_ct_series(phantom_hu(3, 8, 8), SPACING, tmp_path / "ct-only", seed=3)[0])


@pytest.mark.parametrize(("make", "iod"), [(_mr, "MRImage"), (_ct, "CTImage")], ids=["mr", "ct"])
def test_dciodvfy_reports_a_broken_object(tmp_path: Path, make: object, iod: str) -> None:
    ds = make(tmp_path)  # type: ignore[operator]
    good, bad = tmp_path / "good.dcm", tmp_path / "bad.dcm"
    ds.save_as(good, enforce_file_format=True)
    assert dciodvfy_report(good) == (iod, [])   # the positive control: the same object unbroken
    del ds.ImageOrientationPatient               # Type 1 in the Image Plane module
    del ds.Modality                              # Type 1 in the General Series module
    ds.PatientSex = "X"                          # not one of M, F, O
    with pydicom.config.disable_value_validation():
        ds.save_as(bad, enforce_file_format=True)
    recognised, errors = dciodvfy_report(bad)
    assert recognised == iod
    for name in ("ImageOrientationPatient", "Modality", "Patient's Sex"):
        assert any(name in line for line in errors), (name, errors)
    with pytest.raises(AssertionError, match="dciodvfy errors"):
        assert_valid_files([bad])
