"""What routing rules match against, read from DICOM files on disk (the one I/O of ``route``)."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import InputError

log = logging.getLogger(__name__)

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"   # DICOMDIR: no image, never a series' instance
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, struct.error)


@dataclass(frozen=True)
class SeriesFacts:
    """What rules match against: the header of the series' first instance and its sender."""

    dataset: pydicom.Dataset     # header of the series' first instance (no pixels)
    calling_ae: str | None       # AE title of the sender (None: unknown, e.g. after a restart)


@dataclass(frozen=True)
class FolderScan:
    """The DICOM files of a folder: which one is the first instance, and what else was there."""

    first: Path                  # lowest InstanceNumber (then file name) among readable DICOM files
    dicom_files: int             # readable DICOM files (DICOMDIRs excluded)
    skipped_files: int           # files that are not DICOM, or are DICOMDIRs
    series_uids: tuple[str, ...]  # SeriesInstanceUIDs seen, sorted (more than one: a mixed folder)


def read_facts(path: Path, calling_ae: str | None = None) -> SeriesFacts:
    """Read ``path``'s header (pixels left in the file); InputError if it is not readable DICOM."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read {path} as a DICOM file: {exc}") from None
    return SeriesFacts(dataset=dataset, calling_ae=calling_ae)


def scan_series_folder(folder: Path) -> FolderScan:
    """Find the first instance (lowest InstanceNumber) among the DICOM files directly in ``folder``.

    Non-DICOM files and DICOMDIRs are skipped; files without an InstanceNumber sort last. Only a
    few header elements are read per file. InputError when the folder has no DICOM file.
    """
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    candidates: list[tuple[float, str, Path]] = []   # (InstanceNumber or inf, name, path)
    series: set[str] = set()
    skipped = 0
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["InstanceNumber", "SeriesInstanceUID", "SOPClassUID"])
            media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
            number_value = ds.get("InstanceNumber")
            series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        except _READ_ERRORS as exc:
            log.debug("skipping %s: not DICOM (%s)", path.name, exc)
            skipped += 1
            continue
        if media_class == _MEDIA_STORAGE_DIRECTORY:
            skipped += 1
            continue
        try:
            number = float(int(number_value)) if number_value not in (None, "") else float("inf")
        except (TypeError, ValueError):
            number = float("inf")
        candidates.append((number, path.name, path))
        if series_uid:
            series.add(series_uid)
    if not candidates:
        raise InputError(f"{folder} holds no DICOM file ({skipped} other file(s) skipped)")
    first = min(candidates)[2]
    return FolderScan(first=first, dicom_files=len(candidates), skipped_files=skipped,
                      series_uids=tuple(sorted(series)))

