"""The durable spool: received instances on disk before the SCP answers success.

Layout under the spool root::

    incoming/<series uid>/<sop instance uid>.dcm   received CT, one file per instance
    output/<job id>/                               the job's MR series (jobs/outputs.py)
    jobs.sqlite3                                   job records (see jobs/store.py)
    receiver.lock                                  held by the receiving process (receive/lock.py)

Every file is written to a temporary name in its final folder, fsynced, renamed with
``os.replace`` and the folder fsynced (:mod:`ct2mri_node.fsutil`), so a crash leaves either
the old or the new file.

:class:`Spool` stores instances and lists series. It answers the C-STORE path's per-instance
questions from memory (:mod:`ct2mri_node.receive.members`), which is exact while one process
receives into ``incoming/`` (the one holding ``receiver.lock``: :meth:`Spool.lock_receiver`).
Retention removes a series (:meth:`Spool.remove_series`) crash-safely
(:mod:`ct2mri_node.receive.removal`); a store and the removal of the same series exclude each
other through a per-series readers/writer guard: stores share it (one series over several
associations is not serialised), a removal takes it alone.

Observers (``ops/metrics.py``) subscribe through :attr:`Spool.listeners` (:class:`SpoolListener`)
instead of subclassing; a listener that raises is logged and never fails a store.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import SpoolError
from ..fsutil import Data, atomic_write, buffers, fsync_dir
from .lock import ReceiverLock
from .members import FreeSpace, SeriesMembers
from .removal import erase, hide, remove_leftovers, unhide

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Series whose last store time is remembered before old entries are pruned.
KNOWN_STORE_TIMES = 4096


def is_valid_uid(value: object) -> bool:
    """A DICOM UID that is safe as a file name: digits and dots, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


class StoreOutcome(enum.Enum):
    """What :meth:`Spool.store` did with an instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"   # same SOP Instance UID, same bytes: nothing written
    REPLACED = "replaced"     # same SOP Instance UID, different bytes: the newer kept


class SpoolListener(Protocol):
    """What the spool tells its observers (ops/metrics.py implements it)."""

    def instance_stored(self, outcome: StoreOutcome, nbytes: int) -> None:
        """An instance was kept (or found already kept); ``nbytes`` written (0 for a duplicate)."""

    def store_failed(self, error: SpoolError) -> None:
        """The disk refused an instance (the SCP answers out of resources)."""

    def folder_removed(self, kind: str) -> None:
        """Retention removed a folder: ``input`` (a series' CT) or ``output`` (a job's MR)."""


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
    """The spool folder: durable received instances, listed by series."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.output = self.root / "output"
        #: Observers told about stores and removals (see :class:`SpoolListener`).
        self.listeners: list[SpoolListener] = []
        self._lock = threading.Lock()
        self._guard_changed = threading.Condition(self._lock)
        self._storing: dict[str, int] = {}          # series -> stores in flight (shared guard)
        self._removing: set[str] = set()            # series being removed (exclusive guard)
        self._stored_at: dict[str, float] = {}      # series -> monotonic time of its last store
        self._members = SeriesMembers(self.incoming)
        self._free = FreeSpace(self.root)

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
        series = header.series_uid
        self._enter_store(series)
        members: set[str] | None = None
        nbytes = 0
        try:
            outcome, members = self._write(data, header)
        except SpoolError as exc:
            self._notify("store_failed", exc)
            raise
        finally:
            if members is not None:
                nbytes = sum(b.nbytes for b in buffers(data))
                self._members.add(members, header.sop_instance_uid)
                self._free.wrote(nbytes)
            with self._lock:
                self._leave_store(series)
        if outcome is StoreOutcome.REPLACED:
            log.warning(
                "instance %s of series %s received again with different content; kept the newer",
                header.sop_instance_uid, header.series_uid,
            )
        self._notify("instance_stored", outcome, nbytes)
        return outcome

    def _notify(self, event: str, *args: object) -> None:
        """Call ``event`` on every listener; a listener's error is logged, never raised."""
        for listener in self.listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:  # noqa: BLE001 (an observer must never fail a store or a removal)
                log.exception("spool listener %r failed on %s", listener, event)

    def notify_removed(self, kind: str) -> None:
        """Tell the listeners a folder of ``kind`` (``input`` or ``output``) was removed."""
        self._notify("folder_removed", kind)

    def _write(self, data: Data, header: InstanceHeader) -> tuple[StoreOutcome, set[str] | None]:
        """The store itself (under the series' shared guard): the outcome, and the member set to
        add the instance to (None for a duplicate, nothing written)."""
        folder = os.path.join(self.incoming, header.series_uid)
        target = os.path.join(folder, f"{header.sop_instance_uid}.dcm")
        try:
            members = self._members.get(header.series_uid)
            outcome = StoreOutcome.STORED
            if header.sop_instance_uid in members:
                if _same_content(target, data):
                    return StoreOutcome.DUPLICATE, None
                outcome = StoreOutcome.REPLACED
            elif not members:
                self._make_series_folder(folder)
            try:
                atomic_write(Path(target), data)
            except FileNotFoundError:   # the folder was removed behind our back: make it again
                self.forget(header.series_uid)
                self._make_series_folder(folder)
                members = self._members.get(header.series_uid)
                atomic_write(Path(target), data)
        except OSError as exc:
            raise SpoolError(
                f"cannot write to the spool {self.incoming}: {exc.strerror or exc}; "
                "free disk space or fix permissions"
            ) from exc
        return outcome, members

    # -- the per-series readers/writer guard ---------------------------------------------------
    def _enter_store(self, series_uid: str) -> None:
        """Take the series' shared guard (waits only while that series is being removed)."""
        with self._lock:
            while series_uid in self._removing:
                self._guard_changed.wait()
            self._storing[series_uid] = self._storing.get(series_uid, 0) + 1

    def _leave_store(self, series_uid: str) -> None:
        """Give the shared guard back; the caller holds ``self._lock``."""
        left = self._storing[series_uid] - 1
        self._stored_at[series_uid] = time.monotonic()
        if left:
            self._storing[series_uid] = left
            return
        del self._storing[series_uid]
        if series_uid in self._removing:
            self._guard_changed.notify_all()
        if len(self._stored_at) > KNOWN_STORE_TIMES:
            oldest = sorted(self._stored_at, key=self._stored_at.__getitem__)[: KNOWN_STORE_TIMES // 2]
            for uid in oldest:
                del self._stored_at[uid]

    @contextmanager
    def _exclusive(self, series_uid: str) -> Iterator[None]:
        """Hold the series' guard alone: no store of it runs until the block ends."""
        with self._lock:
            while series_uid in self._removing:
                self._guard_changed.wait()
            self._removing.add(series_uid)          # new stores of the series wait from here on
            while self._storing.get(series_uid):
                self._guard_changed.wait()
        try:
            yield
        finally:
            with self._lock:
                self._removing.discard(series_uid)
                self._guard_changed.notify_all()

    def last_stored(self, series_uid: str) -> float | None:
        """Monotonic time this process last stored (or was re-sent) an instance of the series."""
        with self._lock:
            return self._stored_at.get(series_uid)

    # -- removal (retention) -------------------------------------------------------------------
    def remove_series(
        self, series_uid: str, *, confirm: Callable[[], bool] | None = None,
        unless_stored_since: float | None = None,
    ) -> bool:
        """Remove a series' received CT, excluding stores of it meanwhile; True when it is gone.

        Kept (False) when an instance of it was stored at or after ``unless_stored_since``
        (monotonic) or when ``confirm()`` (called with the folder hidden, e.g. to mark the jobs
        purged in one transaction) says no; the folder is then put back. A series with no folder
        counts as gone once confirmed.
        """
        if not is_valid_uid(series_uid):
            raise SpoolError(f"{series_uid!r} is not a valid series UID")
        folder = self.incoming / series_uid
        with self._exclusive(series_uid):
            stored = self.last_stored(series_uid)
            if unless_stored_since is not None and stored is not None and stored >= unless_stored_since:
                return False
            try:
                hidden = hide(folder)
                if confirm is not None and not confirm():
                    if hidden is not None:
                        unhide(hidden, folder)
                    return False
                if hidden is not None:
                    erase(hidden)
                    self.notify_removed("input")
            finally:   # whatever happened, the members are read from the folder next time
                self.forget(series_uid)
        return True

    def remove_leftovers(self) -> int:
        """Delete folders a crash left hidden mid-removal (``.purge-*``); how many. Call at start,
        in the process that holds the receiver lock."""
        return remove_leftovers((self.incoming, self.output))

    def lock_receiver(self) -> ReceiverLock:
        """Hold ``<spool>/receiver.lock`` (flock) while this process receives into the spool.

        ConfigError when another process holds it: the in-memory membership cache assumes one
        receiving process per spool.
        """
        return ReceiverLock.acquire(self.root / "receiver.lock")

    # -- what the C-STORE path asks ------------------------------------------------------------
    def instance_count(self, series_uid: str) -> int:
        """How many instances of a series are spooled (0 for a series not seen yet)."""
        return len(self._members.get(series_uid))

    def has_instance(self, header: InstanceHeader) -> bool:
        """Whether this SOP Instance is already spooled (a re-send, not a new instance)."""
        return header.sop_instance_uid in self._members.get(header.series_uid)

    def forget(self, series_uid: str) -> None:
        """Drop what memory holds about a series (call after removing its folder)."""
        self._members.forget(series_uid)

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system (0 when it cannot be read); cached, see
        :class:`~ct2mri_node.receive.members.FreeSpace`."""
        return self._free.bytes()

    def _make_series_folder(self, folder: str) -> None:
        """Create a series folder durably (its name in ``incoming/`` survives a crash)."""
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            fsync_dir(self.incoming)

    # -- listing -------------------------------------------------------------------------------
    def series_uids(self) -> list[str]:
        """Every series that has instances in the spool."""
        if not self.incoming.is_dir():
            return []
        return sorted(p.name for p in self.incoming.iterdir() if p.is_dir() and is_valid_uid(p.name))

    def series_description(self, series_uid: str) -> str:
        """The SeriesDescription of the series' first spooled file (by name), '' when it has no
        files or the header is unreadable (an unreadable header only loses the priority rule,
        never the job); SpoolError as :meth:`instance_paths` when the series has no folder."""
        paths = self.instance_paths(series_uid)
        if not paths:
            return ""
        try:
            ds = pydicom.dcmread(paths[0], stop_before_pixels=True, specific_tags=["SeriesDescription"])
        except Exception:  # noqa: BLE001 (an unreadable header only loses the rule, never the job)
            return ""
        return str(ds.get("SeriesDescription", "") or "")

    def written_since(self, series_uid: str, when: float) -> bool:
        """Whether an instance of the series was written (added or replaced) after wall-clock
        ``when``: its folder changed since (one stat), and one of its files is newer (a folder
        touched only by the removal of a leftover temporary file does not count)."""
        folder = self.incoming / series_uid
        try:
            if folder.stat().st_mtime <= when:
                return False
            return any(p.stat().st_mtime > when for p in folder.glob("*.dcm") if not p.name.startswith("."))
        except OSError:   # the series is gone (retention): nothing to translate
            return False

    def instance_paths(self, series_uid: str) -> list[Path]:
        """The spooled files of one series (sorted by name; order does not matter downstream)."""
        if not is_valid_uid(series_uid):
            raise SpoolError(f"{series_uid!r} is not a valid series UID")
        folder = self.incoming / series_uid
        if not folder.is_dir():
            raise SpoolError(f"series {series_uid} has no files in the spool {self.incoming}")
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))


def _same_content(path: str, data: Data) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (False when it is gone)."""
    try:
        with open(path, "rb") as handle:
            stored = handle.read()
    except FileNotFoundError:
        return False
    return stored == b"".join(buffers(data))
