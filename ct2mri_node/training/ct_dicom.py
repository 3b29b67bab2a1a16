"""Write a CT volume in HU as a valid CT Image Storage series (one file per slice).

Used by the tests, by ``ct2mri-node phantoms --dicom`` and by the node's quick start, so that
everything the node receives in a demonstration was made by the project itself. All UIDs are
derived from ``seed`` (and the slice index): the same call writes the same bytes.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

from .. import __version__
from ..deliver.uids import uid_from
from ..errors import InputError

log = logging.getLogger(__name__)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (row direction x column direction) of an ImageOrientationPatient."""
    if len(orientation) != 6:
        raise InputError(f"orientation needs 6 values, got {len(orientation)}")
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise InputError(f"orientation {tuple(orientation)} has parallel row and column vectors")
    return normal / norm


def _stored_pixels(hu: np.ndarray, signed: bool, intercept: float, slope: float) -> np.ndarray:
    """HU -> stored integers (rounded, clipped to the storage range)."""
    values = np.rint((hu.astype(np.float64) - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    return np.clip(values, info.min, info.max).astype(dtype)


def _base_dataset(
    *, patient_name: str, patient_id: str, character_set: str | None,
    study_uid: str, series_uid: str, frame_uid: str, series_number: int,
    patient_position: str, body_part: str, study_description: str, series_description: str,
) -> Dataset:
    """Patient, study, series, frame of reference and equipment attributes shared by all slices."""
    ds = Dataset()
    if character_set:
        ds.SpecificCharacterSet = character_set
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20260115"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "093000"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "CT"
    ds.Manufacturer = "ct2mri-node phantom"
    ds.InstitutionName = "ct2mri-node test site"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "Synthetic CT"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = body_part
    ds.KVP = "120"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = f"ct2mri-node {__version__}"
    ds.PatientPosition = patient_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ConvolutionKernel = "STANDARD"
    return ds


def ct_series_datasets(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    seed: int = 0,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] | None = None,
    patient_name: str = "PHANTOM^CT",
    patient_id: str | None = None,
    character_set: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    patient_position: str = "HFS",
    body_part: str = "HEAD",
    signed: bool = False,
    rescale_intercept: float | None = None,
    rescale_slope: float = 1.0,
    study_description: str = "PHANTOM CT",
    series_description: str = "PHANTOM CT",
) -> list[Dataset]:
    """Build one CT Image Storage dataset per slice of ``hu`` (slice, row, col), in slice order.

    Slice ``k`` sits at ``origin + k * spacing[0] * normal`` where ``normal`` is the cross product
    of the orientation's row and column vectors; ``spacing`` is (slice, row, col) in mm. Pixels
    are stored as int16 (``signed``, intercept 0 by default) or uint16 (intercept -1024).
    """
    hu = _validated_volume(hu, spacing, rescale_slope)
    intercept = (0.0 if signed else -1024.0) if rescale_intercept is None else rescale_intercept
    normal = slice_normal(orientation)
    start = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
    if start.shape != (3,):
        raise InputError(f"origin needs 3 values, got {tuple(start.tolist())}")
    base = _base_dataset(
        patient_name=patient_name,
        patient_id=patient_id if patient_id is not None else f"PHANTOM-{seed:04d}",
        character_set=character_set or (None if patient_name.isascii() else "ISO_IR 192"),
        study_uid=study_uid or uid_from("ct-study", seed),
        series_uid=series_uid or uid_from("ct-series", seed, series_number),
        frame_uid=frame_of_reference_uid or uid_from("ct-frame", seed),
        series_number=series_number,
        patient_position=patient_position,
        body_part=body_part,
        study_description=study_description,
        series_description=series_description,
    )
    stored = _stored_pixels(hu, signed, intercept, rescale_slope)
    out = []
    for k in range(hu.shape[0]):
        position = start + k * float(spacing[0]) * normal
        out.append(_slice_dataset(base, stored[k], k, position, orientation, spacing, normal,
                                  signed, intercept, rescale_slope))
    return out


def _validated_volume(hu: np.ndarray, spacing: Sequence[float], slope: float) -> np.ndarray:
    """Check the volume and spacing a caller passes; return ``hu`` as a float array."""
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"CT volume must be 3D (slice, row, col), got shape {hu.shape}")
    if len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
        raise InputError(f"spacing must be 3 positive values in mm, got {tuple(spacing)}")
    if slope == 0:
        raise InputError("rescale_slope must not be 0")
    if not np.all(np.isfinite(hu)):
        raise InputError("CT volume contains non-finite values")
    return hu


def _ds_number(value: float) -> str:
    """Format a float for a DS element (at most 16 characters, no '-0')."""
    text = f"{value:.6g}"
    return "0" if text in ("-0", "0") else text


def _slice_dataset(
    base: Dataset, pixels: np.ndarray, index: int, position: np.ndarray,
    orientation: Sequence[float], spacing: Sequence[float], normal: np.ndarray,
    signed: bool, intercept: float, slope: float,
) -> Dataset:
    """One slice: a copy of ``base`` plus image plane, pixel and per-instance attributes."""
    ds = Dataset()
    ds.update(base)
    ds.SOPInstanceUID = uid_from("ct-instance", base.SeriesInstanceUID, index)
    ds.InstanceNumber = index + 1
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [_ds_number(v) for v in position]
    ds.ImageOrientationPatient = [_ds_number(float(v)) for v in orientation]
    ds.SliceThickness = _ds_number(float(spacing[0]))
    ds.SliceLocation = _ds_number(float(np.dot(position, normal)))
    ds.PixelSpacing = [_ds_number(float(spacing[1])), _ds_number(float(spacing[2]))]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = _ds_number(intercept)
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = np.ascontiguousarray(pixels).astype("<" + pixels.dtype.str[1:]).tobytes()
    _set_file_meta(ds, ExplicitVRLittleEndian)
    return ds


def _set_file_meta(ds: Dataset, transfer_syntax: str) -> None:
    """Fill the file meta group for ``ds`` with ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"CT2MRI_{__version__}"[:16]
    ds.file_meta = meta


def encode_transfer_syntax(ds: Dataset, transfer_syntax: str) -> None:
    """Put ``ds`` in ``transfer_syntax`` (uncompressed ones, or pydicom's lossless encoders)."""
    ts = UID(transfer_syntax)
    if ts in _UNCOMPRESSED:
        _set_file_meta(ds, ts)
        return
    try:
        ds.compress(ts, generate_instance_uid=False)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise InputError(
            f"cannot encode CT in transfer syntax {ts} ({ts.name}): {exc}; use an uncompressed "
            "syntax, RLE Lossless, JPEG-LS Lossless or JPEG 2000 Lossless"
        ) from exc


def write_datasets(datasets: Sequence[Dataset], out_dir: str | os.PathLike[str], *,
                   seed: int = 0, shuffle_names: bool = False, prefix: str = "CT") -> list[Path]:
    """Write ``datasets`` as files in ``out_dir``; return the paths in dataset order.

    With ``shuffle_names`` the file names are a seeded permutation, so that name order says
    nothing about slice order (as with many PACS exports).
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    numbers = list(range(len(datasets)))
    if shuffle_names:
        random.Random(seed).shuffle(numbers)
    paths = []
    for ds, number in zip(datasets, numbers, strict=True):
        path = directory / f"{prefix}{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    log.debug("wrote %d CT files to %s", len(paths), directory)
    return paths


def write_ct_series(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    shuffle_names: bool = False,
    **kwargs: object,
) -> list[Path]:
    """Write ``hu`` as a CT Image Storage series in ``out_dir``; return the paths in slice order.

    Keyword arguments are those of :func:`ct_series_datasets` (orientation, origin,
    patient_name, patient_id, character_set, study_uid, series_uid, signed, ...).
    """
    datasets = ct_series_datasets(hu, spacing, seed=seed, **kwargs)  # type: ignore[arg-type]
    for ds in datasets:
        encode_transfer_syntax(ds, transfer_syntax)
    return write_datasets(datasets, out_dir, seed=seed, shuffle_names=shuffle_names)
