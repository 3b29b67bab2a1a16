"""The durable spool: received instances on disk before the SCP answers success.

Layout under the spool root::

    incoming/<series uid>/<sop instance uid>.dcm   received CT, one file per instance
    output/<job id>/                               the job's MR series (sends retry from here)
    jobs.sqlite3                                   job records (see jobs/store.py)

Every file is written to a temporary name in its final folder, fsynced, renamed with
``os.replace`` and the folder fsynced (:mod:`ct2mri_node.fsutil`), so a crash leaves either
the old or the new file.

The C-STORE path asks "how many instances does this series have, is this one among them, how
much disk is free" for every instance. Scanning the folder each time costs O(slices) per
instance, so :class:`Spool` keeps the SOP Instance UIDs of recently received series in memory
(seeded from the folder on first use) and re-reads free space at most every
``FREE_SPACE_MAX_AGE_S`` seconds or ``FREE_SPACE_MAX_WRITTEN`` bytes. This is exact as long as
one process receives into ``incoming/`` (the ``serve`` or ``serve --role receiver`` process,
as deployed); a process that removes a series folder calls :meth:`Spool.forget`.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import SpoolError
from ..fsutil import Data, atomic_write, fsync_dir

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Series whose instance UIDs stay in memory (least recently received ones are dropped first).
KNOWN_SERIES = 256
#: Free space is read from the file system again after this long or this many bytes written.
FREE_SPACE_MAX_AGE_S = 1.0
FREE_SPACE_MAX_WRITTEN = 64 * 1024 * 1024


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
        self._lock = threading.Lock()
        self._members: OrderedDict[str, set[str]] = OrderedDict()
        self._free_at = float("-inf")      # monotonic time of the last statvfs
        self._free = 0                     # free bytes then
        self._written = 0                  # bytes stored since

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

    def store(self, data: Data, header: InstanceHeader) -> StoreOutcome:
        """Write one encoded instance (with file meta) durably; SpoolError when the disk refuses.

        ``data`` may be several buffers (file meta, then the data set), written back to back.
        """
        folder = os.path.join(self.incoming, header.series_uid)
        target = os.path.join(folder, f"{header.sop_instance_uid}.dcm")
        try:
            members = self._series_members(header.series_uid)
            outcome = StoreOutcome.STORED
            if header.sop_instance_uid in members:
                if _same_content(target, data):
                    return StoreOutcome.DUPLICATE
                outcome = StoreOutcome.REPLACED
            elif not members:
                self._make_series_folder(folder)
            try:
                atomic_write(Path(target), data)
            except FileNotFoundError:   # the folder was removed behind our back: make it again
                self.forget(header.series_uid)
                self._make_series_folder(folder)
                members = self._series_members(header.series_uid)
                atomic_write(Path(target), data)
        except OSError as exc:
            raise SpoolError(
                f"cannot write to the spool {self.incoming}: {exc.strerror or exc}; "
                "free disk space or fix permissions"
            ) from exc
        with self._lock:
            members.add(header.sop_instance_uid)
            self._written += _size(data)
        if outcome is StoreOutcome.REPLACED:
            log.warning(
                "instance %s of series %s received again with different content; kept the newer",
                header.sop_instance_uid, header.series_uid,
            )
        return outcome

    def instance_count(self, series_uid: str) -> int:
        """How many instances of a series are spooled (0 for a series not seen yet)."""
        return len(self._series_members(series_uid))

    def has_instance(self, header: InstanceHeader) -> bool:
        """Whether this SOP Instance is already spooled (a re-send, not a new instance)."""
        return header.sop_instance_uid in self._series_members(header.series_uid)

    def forget(self, series_uid: str) -> None:
        """Drop what memory holds about a series (call after removing its folder)."""
        with self._lock:
            self._members.pop(series_uid, None)

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system (0 when it cannot be read), read again at most
        every ``FREE_SPACE_MAX_AGE_S`` or ``FREE_SPACE_MAX_WRITTEN`` bytes stored, minus what
        was stored since."""
        now = time.monotonic()
        with self._lock:
            if now - self._free_at < FREE_SPACE_MAX_AGE_S and self._written < FREE_SPACE_MAX_WRITTEN:
                return max(self._free - self._written, 0)
        try:
            free = int(shutil.disk_usage(self.root).free)
        except OSError:
            free = 0
        with self._lock:
            self._free, self._free_at, self._written = free, now, 0
        return free

    def _make_series_folder(self, folder: str) -> None:
        """Create a series folder durably (its name in ``incoming/`` survives a crash)."""
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            fsync_dir(self.incoming)

    def _series_members(self, series_uid: str) -> set[str]:
        """The SOP Instance UIDs spooled for a series (the live set; read from disk once)."""
        with self._lock:
            members = self._members.get(series_uid)
            if members is not None:
                self._members.move_to_end(series_uid)
                return members
        members = _scan(self.incoming / series_uid)
        with self._lock:
            members = self._members.setdefault(series_uid, members)
            self._members.move_to_end(series_uid)
            while len(self._members) > KNOWN_SERIES:
                self._members.popitem(last=False)
        return members

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


def _scan(folder: Path) -> set[str]:
    """SOP Instance UIDs of the ``.dcm`` files in a series folder (empty when there is none)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name[:-4] for e in entries if e.name.endswith(".dcm") and not e.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _size(data: Data) -> int:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data).nbytes
    return sum(memoryview(part).nbytes for part in data)


def _same_content(path: str, data: Data) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (False when it is gone)."""
    try:
        with open(path, "rb") as handle:
            stored = handle.read()
    except FileNotFoundError:
        return False
    if isinstance(data, (bytes, bytearray, memoryview)):
        return stored == bytes(data)
    return stored == b"".join(bytes(part) for part in data)
