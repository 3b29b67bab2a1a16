"""The durable spool: received instances on disk before the SCP answers success.

Layout under the spool root::

    incoming/<series uid>/<sop instance uid>.dcm   received CT, one file per instance
    output/<job id>/                               the job's MR series (sends retry from here)
    jobs.sqlite3                                   job records (see jobs/store.py)

Every file is written to a temporary name in its final folder, fsynced, renamed with
``os.replace`` and the folder fsynced (:mod:`ct2mri_node.fsutil`), so a crash leaves either
the old or the new file.
"""

from __future__ import annotations

import enum
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import SpoolError
from ..fsutil import atomic_write

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """A DICOM UID that is safe as a file name: digits and dots, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


class StoreOutcome(enum.Enum):
    """What :meth:`Spool.store` did with an instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"   # same SOP Instance UID, same bytes: nothing written
    REPLACED = "replaced"     # same SOP Instance UID, different bytes: the newer kept


@dataclass(frozen=True)
class InstanceHeader:
    """The few header fields the node needs before any decoding."""

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str


def read_header(path: Path) -> InstanceHeader:
    """Parse the UIDs of a spooled file without reading pixel data."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return header_from_dataset(ds)
    except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
        raise SpoolError(f"spooled file {path} is unreadable: {exc}") from exc


def header_from_dataset(ds: pydicom.Dataset) -> InstanceHeader:
    """Take and validate the UIDs; ValueError names the first missing or malformed one."""
    values = {}
    for field, keyword in (
        ("sop_class_uid", "SOPClassUID"),
        ("sop_instance_uid", "SOPInstanceUID"),
        ("series_uid", "SeriesInstanceUID"),
        ("study_uid", "StudyInstanceUID"),
    ):
        value = str(ds.get(keyword, "") or "").strip("\0 ")
        if not is_valid_uid(value):
            raise ValueError(f"{keyword} is missing or not a valid UID")
        values[field] = value
    return InstanceHeader(**values)


class Spool:
    """The spool folder: durable received instances and per-job output folders."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.output = self.root / "output"

    @property
    def db_path(self) -> Path:
        """Where the job store keeps its SQLite database."""
        return self.root / "jobs.sqlite3"

    def create(self) -> None:
        """Create the folders; SpoolError says which path could not be made."""
        for folder in (self.root, self.incoming, self.output):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create spool folder {folder}: {exc.strerror or exc}") from exc

    def store(self, data: bytes, header: InstanceHeader) -> StoreOutcome:
        """Write one encoded instance (with file meta) durably; SpoolError when the disk refuses."""
        try:
            folder = self.incoming / header.series_uid
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{header.sop_instance_uid}.dcm"
            outcome = StoreOutcome.STORED
            if target.exists():
                if target.read_bytes() == data:
                    return StoreOutcome.DUPLICATE
                outcome = StoreOutcome.REPLACED
            atomic_write(target, data)
        except OSError as exc:
            raise SpoolError(
                f"cannot write to the spool {self.incoming}: {exc.strerror or exc}; "
                "free disk space or fix permissions"
            ) from exc
        if outcome is StoreOutcome.REPLACED:
            log.warning(
                "instance %s of series %s received again with different content; kept the newer",
                header.sop_instance_uid, header.series_uid,
            )
        return outcome

    def instance_count(self, series_uid: str) -> int:
        """How many instances of a series are spooled (0 for a series not seen yet)."""
        folder = self.incoming / series_uid
        try:
            with os.scandir(folder) as entries:
                return sum(1 for e in entries if e.name.endswith(".dcm") and not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return 0

    def has_instance(self, header: InstanceHeader) -> bool:
        """Whether this SOP Instance is already spooled (a re-send, not a new instance)."""
        return (self.incoming / header.series_uid / f"{header.sop_instance_uid}.dcm").is_file()

    def series_uids(self) -> list[str]:
        """Every series that has instances in the spool."""
        if not self.incoming.is_dir():
            return []
        return sorted(p.name for p in self.incoming.iterdir() if p.is_dir() and is_valid_uid(p.name))

    def instance_paths(self, series_uid: str) -> list[Path]:
        """The spooled files of one series (sorted by name; order does not matter downstream)."""
        if not is_valid_uid(series_uid):
            raise SpoolError(f"{series_uid!r} is not a valid series UID")
        folder = self.incoming / series_uid
        if not folder.is_dir():
            raise SpoolError(f"series {series_uid} has no files in the spool {self.incoming}")
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))

    def output_dir(self, job_id: int) -> Path:
        """The folder holding job ``job_id``'s MR series."""
        return self.output / str(int(job_id))
