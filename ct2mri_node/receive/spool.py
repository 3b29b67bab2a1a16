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
as deployed, which holds ``receiver.lock``: :meth:`Spool.lock_receiver`); a process that removes
a series folder calls :meth:`Spool.forget`.

Retention removes folders (:meth:`Spool.remove_series`, :meth:`Spool.remove_output`) crash-safely:
the folder is first renamed to a hidden ``.purge-<name>-<random>`` in the same parent (readers
skip dot names), the parent fsynced, then deleted; :meth:`Spool.remove_leftovers` deletes what a
crash left hidden. A store and the removal of the same series exclude each other through a
per-series readers/writer guard: stores share it (one series over several associations is not
serialised), a removal takes it alone.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import ConfigError, SpoolError
from ..fsutil import Data, atomic_write, buffers, fsync_dir, try_lock

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Series whose instance UIDs stay in memory (least recently received ones are dropped first).
KNOWN_SERIES = 256
#: Free space is read from the file system again after this long or this many bytes written.
FREE_SPACE_MAX_AGE_S = 1.0
FREE_SPACE_MAX_WRITTEN = 64 * 1024 * 1024
#: Prefix of a folder being removed (renamed first, so a crash never leaves half a series visible).
PURGE_PREFIX = ".purge-"
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
        self._guard_changed = threading.Condition(self._lock)
        self._storing: dict[str, int] = {}          # series -> stores in flight (shared guard)
        self._removing: set[str] = set()            # series being removed (exclusive guard)
        self._stored_at: dict[str, float] = {}      # series -> monotonic time of its last store
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
        series = header.series_uid
        self._enter_store(series)
        members: set[str] | None = None
        try:
            outcome, members = self._write(data, header)
        finally:
            with self._lock:   # leaving the shared guard costs no extra lock round trip
                if members is not None:
                    members.add(header.sop_instance_uid)
                    self._written += sum(b.nbytes for b in buffers(data))
                self._leave_store(series)
        if outcome is StoreOutcome.REPLACED:
            log.warning(
                "instance %s of series %s received again with different content; kept the newer",
                header.sop_instance_uid, header.series_uid,
            )
        return outcome

    def _write(self, data: Data, header: InstanceHeader) -> tuple[StoreOutcome, set[str] | None]:
        """The store itself (under the series' shared guard): the outcome, and the member set to
        add the instance to (None for a duplicate, nothing written)."""
        folder = os.path.join(self.incoming, header.series_uid)
        target = os.path.join(folder, f"{header.sop_instance_uid}.dcm")
        try:
            members = self._series_members(header.series_uid)
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
                members = self._series_members(header.series_uid)
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
                hidden = self._hide(folder)
                if confirm is not None and not confirm():
                    if hidden is not None:
                        self._unhide(hidden, folder)
                    return False
                if hidden is not None:
                    self._erase(hidden)
                    self.removed("input")
            finally:   # whatever happened, the members are read from the folder next time
                self.forget(series_uid)
        return True

    def remove_output(self, job_id: int) -> bool:
        """Remove a job's MR series folder and the files beside it named ``<job id>.*`` (its QA
        preview); True when something was removed."""
        folder = self.output_dir(job_id)
        hidden = self._hide(folder)
        if hidden is not None:
            self._erase(hidden)
            self.removed("output")
        removed = hidden is not None
        prefix = f"{int(job_id)}."
        try:
            siblings = [p for p in self.output.iterdir() if p.name.startswith(prefix) and p.is_file()]
            for path in siblings:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot remove the output of job {job_id} in {self.output}: {exc.strerror or exc}") from exc
        return removed or bool(siblings)

    def removed(self, kind: str) -> None:
        """Called once per folder removed (``input`` or ``output``); the metered spool counts them."""

    def output_job_ids(self) -> list[int]:
        """Job ids that have an output folder."""
        if not self.output.is_dir():
            return []
        return sorted(int(p.name) for p in self.output.iterdir() if p.name.isdigit() and p.is_dir())

    def remove_leftovers(self) -> int:
        """Delete folders a crash left hidden mid-removal (``.purge-*``); how many. Call at start,
        in the process that holds the receiver lock."""
        count = 0
        for parent in (self.incoming, self.output):
            if not parent.is_dir():
                continue
            for path in parent.iterdir():
                if path.name.startswith(PURGE_PREFIX):
                    self._erase(path)
                    count += 1
        if count:
            log.info("removed %d folder(s) left half-removed in the spool", count)
        return count

    def _hide(self, folder: Path) -> Path | None:
        """Rename ``folder`` to a hidden name in its parent, durably; None when it does not exist."""
        hidden = folder.with_name(f"{PURGE_PREFIX}{folder.name}-{secrets.token_hex(4)}")
        try:
            os.rename(folder, hidden)
            fsync_dir(folder.parent)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SpoolError(f"cannot remove {folder}: {exc.strerror or exc}; fix the spool's permissions") from exc
        return hidden

    def _unhide(self, hidden: Path, folder: Path) -> None:
        """Put a hidden folder back (a removal that was not confirmed)."""
        try:
            os.rename(hidden, folder)
            fsync_dir(folder.parent)
        except OSError as exc:
            raise SpoolError(f"cannot restore {folder} from {hidden}: {exc.strerror or exc}") from exc

    def _erase(self, hidden: Path) -> None:
        """Delete a hidden folder (what is already gone is fine)."""
        def gone_is_fine(func: Callable[..., object], path: str, exc_info: object) -> None:
            if not isinstance(exc_info, tuple) or not isinstance(exc_info[1], FileNotFoundError):
                raise SpoolError(f"cannot delete {path} from the spool; fix its permissions")

        if hidden.is_dir():
            shutil.rmtree(hidden, onerror=gone_is_fine)
        else:
            hidden.unlink(missing_ok=True)

    # -- the receiver lock ---------------------------------------------------------------------
    def lock_receiver(self) -> ReceiverLock:
        """Hold ``<spool>/receiver.lock`` (flock) while this process receives into the spool.

        ConfigError when another process holds it: the in-memory membership cache assumes one
        receiving process per spool.
        """
        return ReceiverLock.acquire(self.root / "receiver.lock")

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


class ReceiverLock:
    """An exclusive ``flock`` on a file, held until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, path: Path) -> ReceiverLock:
        """Take the lock without waiting; ConfigError naming the spool when it is held."""
        try:
            handle = try_lock(path)
        except OSError as exc:
            raise SpoolError(f"cannot open {path}: {exc.strerror or exc}; fix the spool's permissions") from exc
        if handle is None:
            raise ConfigError(
                f"another ct2mri-node is receiving into the spool {path.parent} (it holds {path}); "
                "stop it first, or give this node its own spool_dir"
            )
        return cls(path, handle)

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _scan(folder: Path) -> set[str]:
    """SOP Instance UIDs of the ``.dcm`` files in a series folder (empty when there is none)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name[:-4] for e in entries if e.name.endswith(".dcm") and not e.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _same_content(path: str, data: Data) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (False when it is gone)."""
    try:
        with open(path, "rb") as handle:
            stored = handle.read()
    except FileNotFoundError:
        return False
    return stored == b"".join(buffers(data))
