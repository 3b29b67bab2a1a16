"""The fast paths of the DICOM stages give what the plain pydicom paths give.

Deferred pixels (read_series leaves them in the file), per-instance copies that share the
series-level sequences, the memoising file encoder (byte-identical to ``save_as``) and the
durable batched write.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from ct2mri_node.deliver.encode import EncodeOptions, FileEncoder, encode_series
from ct2mri_node.errors import SeriesRejected
from ct2mri_node.jobs.pipeline import write_series
from ct2mri_node.training.ct_dicom import ct_series_datasets, write_ct_series
from ct2mri_node.volume.assemble import assemble, read_series
from ct2mri_node.volume.frames import pixels_deferred
from dicom_checks import SPACING, WHEN, ct_volume, phantom_hu, translation_result

DEFER = 256  # bytes: the tiny test slices' pixels (640 bytes) stay in their files


@pytest.mark.parametrize("syntax", [None, RLELossless, JPEG2000Lossless,
                                    DeflatedExplicitVRLittleEndian])
def test_deferred_pixels_assemble_like_in_memory_datasets(tmp_path: Path,
                                                          syntax: str | None) -> None:
    hu = phantom_hu(8, 32, 32)  # large enough for every encoder
    kwargs = {"transfer_syntax": syntax} if syntax else {}
    paths = write_ct_series(hu, SPACING, tmp_path, signed=True, **kwargs)
    deferred = read_series(paths, defer_size_bytes=DEFER)
    # a deflated file is read whole: its offsets point into the inflated stream
    assert all(pixels_deferred(ds) == (syntax != DeflatedExplicitVRLittleEndian)
               for ds in deferred)
    volume = assemble(deferred)
    assert np.array_equal(volume.hu, assemble(ct_series_datasets(hu, SPACING, signed=True)).hu)
    assert np.array_equal(volume.hu, assemble(read_series(paths, defer_size_bytes=None)).hu)
    assert all(pixels_deferred(ds) == (syntax != DeflatedExplicitVRLittleEndian)
               for ds in deferred)  # assembly cached no pixels on the datasets
    assert len(deferred[0].PixelData) > 0  # still readable on demand


def test_file_changed_after_reading_is_refused(tmp_path: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu, SPACING, tmp_path)
    datasets = read_series(paths, defer_size_bytes=DEFER)
    stat = paths[3].stat()
    os.utime(paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    with pytest.raises(SeriesRejected, match="changed after its header was read") as info:
        assemble(datasets)
    assert info.value.reason == "undecodable_pixels"


def test_instances_do_not_share_what_a_caller_may_change(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu, defer_size_bytes=DEFER)
    first, second = encode_series(ct, translation_result(hu.shape, steps=3))[:2]
    first.SeriesDescription = "changed"
    first.ImageType[2] = "CHANGED"
    assert second.SeriesDescription.startswith("SYNTHETIC MR")
    assert list(second.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert first.SourceImageSequence[0] is not second.SourceImageSequence[0]


@pytest.mark.parametrize("name, charset", [
    ("PHANTOM^CT", None),
    ("Müller^Jörg", "ISO_IR 100"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
])
def test_file_encoder_writes_the_bytes_of_save_as(tmp_path: Path, hu: np.ndarray, name: str,
                                                  charset: object) -> None:
    ct = ct_volume(tmp_path, hu, defer_size_bytes=DEFER, patient_name=name, character_set=charset)
    encoder = FileEncoder()
    for ds in encode_series(ct, translation_result(hu.shape, steps=3), EncodeOptions(contribution_datetime=WHEN)):
        expected = io.BytesIO()
        ds.save_as(expected, enforce_file_format=True)
        assert encoder.encode(ds) == expected.getvalue()


def test_file_encoder_falls_back_for_datasets_read_from_files(tmp_path: Path,
                                                              hu: np.ndarray) -> None:
    paths = write_ct_series(hu[:2], SPACING, tmp_path, transfer_syntax=RLELossless)
    ds = pydicom.dcmread(paths[0])
    expected = io.BytesIO()
    ds.save_as(expected, enforce_file_format=True)
    assert FileEncoder().encode(ds) == expected.getvalue()


def test_write_series_files_read_back_and_no_temporaries(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu, defer_size_bytes=DEFER)
    result = translation_result(hu.shape, steps=3)
    paths = write_series(encode_series(ct, result), tmp_path / "mr")
    assert sorted(tmp_path.joinpath("mr").iterdir()) == sorted(paths)
    for k, path in enumerate(sorted(paths)):
        ds = pydicom.dcmread(path)
        assert ds.InstanceNumber == k + 1
        assert np.array_equal(ds.pixel_array, result.mr[k])


def test_write_series_failure_leaves_no_files(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu, defer_size_bytes=DEFER)
    datasets = encode_series(ct, translation_result(hu.shape, steps=3))
    broken = Dataset()
    broken.update(datasets[4])
    broken.file_meta = FileMetaDataset()  # no transfer syntax: pydicom cannot write it
    datasets[4] = broken
    out = tmp_path / "mr"
    with pytest.raises((ValueError, AttributeError)):
        write_series(datasets, out)
    assert list(out.iterdir()) == []


def test_malformed_header_is_a_refusal(tmp_path: Path, hu: np.ndarray) -> None:
    """A value pydicom cannot parse (an unknown VR, as a fuzzer sends) refuses the series."""
    paths = write_ct_series(hu, SPACING, tmp_path)
    datasets = read_series(paths)
    datasets[2][0x00200013] = RawDataElement(Tag(0x00200013), "SB", 2, b"3 ", 0, False, True)
    with pytest.raises(SeriesRejected, match="malformed header") as info:
        assemble(datasets)
    assert info.value.reason == "invalid_series"
