"""Every series that cannot be made into a volume is refused with an outcome and a message.

Each case writes a small generated series to a folder and runs ``ct2mri-node translate`` on it
in-process: exit code 3 (InputError), a message a PACS admin can act on, nothing written. The
checkpoint does not exist, so a pass also shows that the CT is checked before any model loads.
The machine-readable reason the node records for a failed job is checked on the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ct2mri_node.cli import main
from ct2mri_node.deliver.uids import uid_from
from ct2mri_node.errors import SeriesRejected
from ct2mri_node.training.ct_dicom import ct_series_datasets, write_datasets
from ct2mri_node.volume.assemble import VolumeLimits, assemble, read_series
from dicom_checks import phantom_hu

SPACING = (2.5, 0.7, 0.9)


def _series(**kwargs: object) -> list[Dataset]:
    return ct_series_datasets(phantom_hu(10, 16, 16), SPACING, seed=5, **kwargs)  # type: ignore[arg-type]


def _renamed(ds: Dataset, key: object) -> Dataset:
    """``ds`` as another instance (new SOP Instance UID)."""
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid_from("refusal", key)
    return ds


def _missing_slice() -> list[Dataset]:
    datasets = _series()
    del datasets[4]
    return datasets


def _uneven_spacing() -> list[Dataset]:
    datasets = _series()
    datasets[6].ImagePositionPatient = [0, 0, 2.5 * 6 + 0.8]
    return datasets


def _gantry_tilt() -> list[Dataset]:
    datasets = _series()
    for k, ds in enumerate(datasets):  # positions drift in y along z: a 15 degree tilt
        ds.ImagePositionPatient = [0, round(2.5 * k * float(np.tan(np.radians(15))), 4), 2.5 * k]
    return datasets


def _two_acquisitions() -> list[Dataset]:
    first = _series()
    second = [_renamed(ds, ("acq2", k)) for k, ds in enumerate(_series())]
    for ds in second:
        ds.AcquisitionNumber = 2
    return first + second


def _duplicate_slice() -> list[Dataset]:
    datasets = _series()
    return [*datasets, _renamed(_series()[3], "repeat")]


def _mixed_orientations() -> list[Dataset]:
    datasets = _series()
    for ds in datasets[:5]:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    return datasets


def _not_ct() -> list[Dataset]:
    datasets = _series()
    for ds in datasets:
        ds.Modality = "MR"
    return datasets


def _two_series() -> list[Dataset]:
    return _series() + ct_series_datasets(phantom_hu(10, 16, 16), SPACING, seed=6, series_number=2)


def _no_frame_of_reference() -> list[Dataset]:
    datasets = _series()
    for ds in datasets:
        del ds.FrameOfReferenceUID
    return datasets


@dataclass(frozen=True)
class Refusal:
    make: Callable[[], list[Dataset]]
    reason: str
    words: tuple[str, ...]           # all must appear in the message
    args: tuple[str, ...] = ()       # extra translate options
    limits: VolumeLimits = VolumeLimits()


REFUSALS = {
    "missing-slice": Refusal(_missing_slice, "missing_slices",
                             ("1 slice(s) missing between 7.50 mm and 12.50 mm", "Resend")),
    "uneven-spacing": Refusal(_uneven_spacing, "uneven_spacing",
                              ("uneven slice spacing", "constant spacing")),
    "gantry-tilt": Refusal(_gantry_tilt, "gantry_tilt", ("gantry tilt", "without tilt")),
    "two-acquisitions": Refusal(_two_acquisitions, "duplicate_positions",
                                ("more than one acquisition", "own series")),
    "duplicate-position": Refusal(_duplicate_slice, "duplicate_positions",
                                  ("share positions", "repeated slices")),
    "mixed-orientations": Refusal(_mixed_orientations, "mixed_orientation",
                                  ("orientations", "one reconstruction per series")),
    "not-ct": Refusal(_not_ct, "not_ct", ("modality MR, not CT",)),
    "two-series": Refusal(_two_series, "mixed_series", ("2 series", "one CT series at a time")),
    "no-frame-of-reference": Refusal(_no_frame_of_reference, "missing_geometry",
                                     ("no FrameOfReferenceUID",)),
    "too-few-slices": Refusal(_series, "too_few_slices", ("10 slices; at least 12",),
                              ("--min-slices", "12"), VolumeLimits(min_slices=12)),
    "too-many-slices": Refusal(_series, "too_large", ("10 slices of 16x16", "at most 6 slices"),
                               ("--max-slices", "6", "--min-slices", "4"),
                               VolumeLimits(min_slices=4, max_slices=6)),
    "matrix-too-large": Refusal(_series, "too_large", ("at most 2000 slices of 8x8",),
                                ("--max-matrix", "8"), VolumeLimits(max_rows=8, max_columns=8)),
}


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """The CLI configures the root logger; put it back for the tests that follow."""
    root, pynetdicom = logging.getLogger(), logging.getLogger("pynetdicom")
    handlers, level, pyn_level = root.handlers[:], root.level, pynetdicom.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    pynetdicom.setLevel(pyn_level)


@pytest.mark.parametrize("name", list(REFUSALS))
def test_translate_refuses_with_a_message(name: str, tmp_path: Path, cli_logging: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    refusal = REFUSALS[name]
    folder = tmp_path / "ct"
    write_datasets(refusal.make(), folder, shuffle_names=True)
    out = tmp_path / "mr"
    code = main(["translate", "--input", str(folder), "--output", str(out),
                 "--checkpoint", str(tmp_path / "no-checkpoint"), *refusal.args])
    stderr = capsys.readouterr().err
    assert code == 3, stderr
    assert "ct2mri-node translate: error:" in stderr
    for words in refusal.words:
        assert words in stderr
    assert not out.exists()
    with pytest.raises(SeriesRejected) as info:
        assemble(read_series(sorted(folder.iterdir())), refusal.limits)
    assert info.value.reason == refusal.reason


def test_translate_refuses_bad_limits(tmp_path: Path, cli_logging: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["translate", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--max-slices", "4", "--min-slices", "8"])
    assert code == 2 and "--max-slices 4 is below --min-slices 8" in capsys.readouterr().err


def _tilted(degrees: float) -> list[Dataset]:
    """The phantom series with its positions drifting in y along z by ``degrees`` of gantry tilt."""
    datasets = _series()
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [0, round(SPACING[0] * k * float(np.tan(np.radians(degrees))), 6),
                                   SPACING[0] * k]
    return datasets


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_gantry_tilt_threshold_is_checked_on_both_sides(factor: float, tmp_path: Path) -> None:
    """10% under ``VolumeLimits.max_tilt_deg`` (0.1 degree) is accepted as an axial volume, 10%
    over is refused as gantry tilt with its reason and the measured angle; written and read back
    as files, so the positions are the ones a sender's DS values give."""
    limit = VolumeLimits().max_tilt_deg
    write_datasets(_tilted(limit * factor), tmp_path / "ct", shuffle_names=True)
    datasets = read_series(sorted((tmp_path / "ct").iterdir()))
    if factor < 1:
        volume = assemble(datasets)
        assert volume.hu.shape == (10, 16, 16)
        assert volume.spacing[0] == pytest.approx(SPACING[0], abs=1e-6)
        return
    with pytest.raises(SeriesRejected) as info:
        assemble(datasets)
    assert info.value.reason == "gantry_tilt"
    assert f"about {limit * factor:.2f} degrees off: gantry tilt" in str(info.value)
