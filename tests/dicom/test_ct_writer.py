"""The CT series writer: valid CT Image Storage, geometry along the normal, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from ct2mri_node.errors import InputError
from ct2mri_node.training.ct_dicom import slice_normal, write_ct_series
from dicom_checks import assert_valid_files


def _hu_of(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.mark.parametrize("signed", [False, True])
def test_series_is_valid_ct(tmp_path: Path, hu: np.ndarray, signed: bool) -> None:
    paths = write_ct_series(hu, (2.5, 0.7, 0.9), tmp_path, signed=signed, patient_name="Müller^Jörg")
    assert len(paths) == hu.shape[0]
    assert_valid_files(paths)
    first = pydicom.dcmread(paths[0])
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert first.SpecificCharacterSet == "ISO_IR 192"
    assert first.PixelRepresentation == int(signed)
    assert [float(v) for v in first.PixelSpacing] == [0.7, 0.9]
    assert np.array_equal(_hu_of(paths[3]), np.rint(hu[3]))


def test_positions_run_along_the_normal(tmp_path: Path, hu: np.ndarray) -> None:
    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal
    paths = write_ct_series(hu, (2.0, 1.0, 1.0), tmp_path, orientation=orientation, origin=(5, -3, 7))
    normal = slice_normal(orientation)
    positions = [np.array(pydicom.dcmread(p).ImagePositionPatient, dtype=float) for p in paths]
    steps = np.diff(positions, axis=0)
    assert np.allclose(steps, 2.0 * normal)
    assert np.allclose(positions[0], (5, -3, 7))


def test_same_seed_same_bytes_shuffled_names(tmp_path: Path, hu: np.ndarray) -> None:
    a = write_ct_series(hu, (2.0, 1.0, 1.0), tmp_path / "a", seed=3, shuffle_names=True)
    b = write_ct_series(hu, (2.0, 1.0, 1.0), tmp_path / "b", seed=3, shuffle_names=True)
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.name for p in a] != sorted(p.name for p in a)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    c = write_ct_series(hu, (2.0, 1.0, 1.0), tmp_path / "c", seed=4)
    assert pydicom.dcmread(c[0]).SeriesInstanceUID != pydicom.dcmread(a[0]).SeriesInstanceUID


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_lossless_syntaxes_round_trip(tmp_path: Path, hu: np.ndarray, syntax: str) -> None:
    paths = write_ct_series(hu, (2.0, 1.0, 1.0), tmp_path, transfer_syntax=syntax, signed=True)
    assert_valid_files(paths[:2])
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(_hu_of(paths[5]), np.rint(hu[5]))


def test_bad_arguments_are_refused(tmp_path: Path, hu: np.ndarray) -> None:
    with pytest.raises(InputError, match="3D"):
        write_ct_series(hu[0], (2.0, 1.0, 1.0), tmp_path)
    with pytest.raises(InputError, match="parallel"):
        write_ct_series(hu, (2.0, 1.0, 1.0), tmp_path, orientation=(1, 0, 0, 1, 0, 0))
    with pytest.raises(InputError, match="spacing"):
        write_ct_series(hu, (0.0, 1.0, 1.0), tmp_path)
