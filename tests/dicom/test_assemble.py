"""Volume assembly: sorting along the normal, HU, localizers, and each refusal with its message."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from ct2mri_node.errors import SeriesRejected
from ct2mri_node.training.ct_dicom import ct_series_datasets, write_ct_series
from ct2mri_node.volume.assemble import VolumeLimits, assemble, read_series

SPACING = (2.5, 0.7, 0.9)


def _shuffled(datasets: list[Dataset], seed: int = 1) -> list[Dataset]:
    out = list(datasets)
    random.Random(seed).shuffle(out)
    return out


def test_shuffled_files_with_any_names(tmp_path: Path, hu: np.ndarray) -> None:
    write_ct_series(hu, SPACING, tmp_path, shuffle_names=True)
    (tmp_path / "README.txt").write_text("not DICOM")
    files = sorted(tmp_path.iterdir(), reverse=True)
    volume = assemble(_shuffled(read_series(files)))
    assert volume.hu.dtype == np.int16  # slope 1, intercept -1024: exact in int16
    assert np.array_equal(volume.hu, np.rint(hu))
    assert volume.spacing == pytest.approx(SPACING)
    assert [s.position[2] for s in volume.slices] == pytest.approx([2.5 * k for k in range(10)])
    assert "PixelData" not in volume.header
    assert not volume.lossy


def test_feet_first_slices_ascend_along_the_normal(hu: np.ndarray) -> None:
    orientation = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # FFS: normal points to -z
    datasets = ct_series_datasets(hu, SPACING, orientation=orientation, origin=(0, 0, 100),
                                  patient_position="FFS")
    volume = assemble(_shuffled(datasets))
    z = [s.position[2] for s in volume.slices]
    assert z == sorted(z, reverse=True)  # ascending along (0, 0, -1)
    assert np.array_equal(volume.hu, np.rint(hu))
    assert volume.orientation == orientation


def test_oblique_non_square_signed(hu: np.ndarray) -> None:
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    orientation = (float(c), float(s), 0.0, 0.0, 0.0, -1.0)  # oblique coronal-ish plane
    datasets = ct_series_datasets(hu, (1.5, 0.6, 1.2), orientation=orientation, signed=True,
                                  rescale_intercept=-100.0, rescale_slope=0.5)
    volume = assemble(_shuffled(datasets))
    assert volume.spacing == pytest.approx((1.5, 0.6, 1.2), abs=1e-4)
    assert np.allclose(volume.hu, np.rint((hu + 100) / 0.5) * 0.5 - 100)


def test_localizer_is_left_out_with_a_note(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    scout = ct_series_datasets(hu[:1], SPACING, orientation=(1, 0, 0, 0, 0, -1), seed=0)[0]
    scout.SOPInstanceUID = "1.2.3.4.5"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    volume = assemble(_shuffled([*datasets, scout]))
    assert volume.hu.shape == hu.shape
    assert any("localizer" in note and "1.2.3.4.5" in note for note in volume.notes)
    untagged = ct_series_datasets(hu[:1], SPACING, orientation=(0, 1, 0, 0, 0, -1))[0]
    untagged.SOPInstanceUID = "1.2.3.4.6"
    volume = assemble([*datasets, untagged])
    assert any("orientation" in note and "1.2.3.4.6" in note for note in volume.notes)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                                    RLELossless, JPEG2000Lossless])
def test_transfer_syntaxes_decode(tmp_path: Path, syntax: str) -> None:
    hu = np.rint(np.random.default_rng(0).normal(0, 400, (8, 32, 32)))
    paths = write_ct_series(hu, SPACING, tmp_path, transfer_syntax=syntax, signed=True)
    volume = assemble(read_series(paths))
    assert np.array_equal(volume.hu, hu)


def test_lossy_source_is_flagged(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    datasets[0].LossyImageCompression = "01"
    datasets[0].LossyImageCompressionMethod = "ISO_10918_1"
    volume = assemble(datasets)
    assert volume.lossy and volume.lossy_methods == ("ISO_10918_1",)


def _reject(datasets: list[Dataset], reason: str, words: str,
            limits: VolumeLimits = VolumeLimits()) -> SeriesRejected:
    with pytest.raises(SeriesRejected) as info:
        assemble(datasets, limits)
    assert info.value.reason == reason
    assert words in str(info.value)
    return info.value


def test_reject_mixed_series(hu: np.ndarray) -> None:
    a = ct_series_datasets(hu, SPACING, seed=1)
    b = ct_series_datasets(hu, SPACING, seed=2, series_number=2)
    _reject(a + b, "mixed_series", "2 series")


def test_reject_non_ct(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    for ds in datasets:
        ds.Modality = "MR"
    _reject(datasets, "not_ct", "not CT")


def test_reject_missing_slice(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    del datasets[4]
    error = _reject(_shuffled(datasets), "missing_slices", "1 slice(s) missing")
    assert "7.50 mm and 12.50 mm" in str(error)


def test_reject_uneven_spacing(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    datasets[6].ImagePositionPatient = [0, 0, 2.5 * 6 + 0.8]
    _reject(datasets, "uneven_spacing", "uneven slice spacing")


def test_reject_duplicate_positions(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    extra = ct_series_datasets(hu, SPACING, series_uid=datasets[0].SeriesInstanceUID, seed=9)[3]
    extra.SOPInstanceUID = "1.2.3.99"
    _reject([*datasets, extra], "duplicate_positions", "more than one acquisition")


def test_reject_gantry_tilt(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    for k, ds in enumerate(datasets):  # positions drift in y: a 15 degree tilt
        ds.ImagePositionPatient = [0, round(2.5 * k * np.tan(np.radians(15)), 4), 2.5 * k]
    _reject(datasets, "gantry_tilt", "gantry tilt")


def test_reject_mixed_orientations(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    for ds in datasets[:5]:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    _reject(datasets, "mixed_orientation", "orientations")


def test_reject_mixed_grid(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    datasets[2].PixelSpacing = [0.8, 0.9]
    _reject(datasets, "mixed_grid", "pixel spacing")


def test_reject_too_few_and_too_large(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)
    _reject(datasets, "too_few_slices", "at least 12", VolumeLimits(min_slices=12))
    _reject(datasets, "too_large", "at most 2000 slices of 8x1024", VolumeLimits(max_rows=8))


def test_reject_empty_and_missing_geometry(hu: np.ndarray) -> None:
    _reject([], "empty_series", "no DICOM instances")
    datasets = ct_series_datasets(hu, SPACING)
    del datasets[3].ImagePositionPatient
    _reject(datasets, "missing_geometry", "lacks ImagePositionPatient")


def test_read_series_skips_non_dicom(tmp_path: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu[:3], SPACING, tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 300)
    datasets = read_series([*paths, junk, tmp_path / "missing.dcm"])
    assert len(datasets) == 3
    assert all(isinstance(ds, pydicom.Dataset) for ds in datasets)


# -- the volume's dtype: int16 where exact, float32 where needed ---------------------------------


def test_slope_one_intercept_1024_assembles_exact_int16(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING)  # uint16 stored, BitsStored 16
    assert datasets[0].RescaleIntercept == -1024 and datasets[0].RescaleSlope == 1
    sixteen = assemble(_shuffled(datasets)).hu
    for ds in datasets:  # 12 bits stored, as most scanners write
        ds.BitsStored, ds.HighBit = 12, 11
    twelve = assemble(_shuffled(datasets)).hu
    for volume in (sixteen, twelve):
        assert volume.dtype == np.int16
        assert np.array_equal(volume, np.rint(hu))


def test_non_integer_slope_assembles_float32(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING, signed=True, rescale_slope=0.5,
                                  rescale_intercept=-1024.0)
    volume = assemble(datasets)
    assert volume.hu.dtype == np.float32
    expected = np.rint((hu + 1024) / 0.5).astype(np.float32) * np.float32(0.5) - np.float32(1024)
    assert np.array_equal(volume.hu, expected)


def test_values_beyond_int16_fall_back_to_exact_float32(hu: np.ndarray) -> None:
    values = np.rint(hu).astype(np.float64)
    values[6, 2, 3] = 32767.0 + 1024.0 - 5.0  # stored 32762 (int16) + intercept 1024
    values[7, 0, 0] = -32768.0 + 1024.0       # stored -32768: the lowest signed value
    datasets = ct_series_datasets(values, SPACING, signed=True, rescale_intercept=1024.0)
    volume = assemble(_shuffled(datasets))
    assert volume.hu.dtype == np.float32   # slices 0..5 fitted int16 before slice 6 did not
    assert np.array_equal(volume.hu, values)
    assert volume.hu[6, 2, 3] == 33786.0


def test_integer_slope_two_stays_int16_when_the_values_fit(hu: np.ndarray) -> None:
    datasets = ct_series_datasets(hu, SPACING, signed=True, rescale_slope=2.0,
                                  rescale_intercept=-1024.0)
    expected = np.rint((hu + 1024) / 2) * 2 - 1024
    volume = assemble(datasets)  # 16-bit signed x 2 may overflow; the actual values fit
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.hu, expected)
    for ds in datasets:  # 12 bits signed
        ds.BitsStored, ds.HighBit = 12, 11
    volume = assemble(datasets)
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.hu, expected)
