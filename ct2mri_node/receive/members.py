"""What the C-STORE path asks for every instance, answered from memory.

"How many instances does this series have, is this one among them, how much disk is free":
scanning the series folder each time costs O(slices) per instance, so :class:`SeriesMembers`
keeps the SOP Instance UIDs of recently received series in memory (seeded from the folder on
first use) and :class:`FreeSpace` re-reads free space at most every ``FREE_SPACE_MAX_AGE_S``
seconds or ``FREE_SPACE_MAX_WRITTEN`` bytes. Both are exact as long as one process receives
into the spool (the one holding ``receiver.lock``, :mod:`ct2mri_node.receive.lock`); a process
that removes a series folder calls :meth:`SeriesMembers.forget`.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

#: Series whose instance UIDs stay in memory (least recently received ones are dropped first).
KNOWN_SERIES = 256
#: Free space is read from the file system again after this long or this many bytes written.
FREE_SPACE_MAX_AGE_S = 1.0
FREE_SPACE_MAX_WRITTEN = 64 * 1024 * 1024


class SeriesMembers:
    """The SOP Instance UIDs spooled per series, for the ``KNOWN_SERIES`` most recent series."""

    def __init__(self, incoming: Path) -> None:
        self.incoming = incoming
        self._lock = threading.Lock()
        self._members: OrderedDict[str, set[str]] = OrderedDict()

    def get(self, series_uid: str) -> set[str]:
        """The live member set of a series (read from its folder once; callers add to it)."""
        with self._lock:
            members = self._members.get(series_uid)
            if members is not None:
                self._members.move_to_end(series_uid)
                return members
        members = scan(self.incoming / series_uid)
        with self._lock:
            members = self._members.setdefault(series_uid, members)
            self._members.move_to_end(series_uid)
            while len(self._members) > KNOWN_SERIES:
                self._members.popitem(last=False)
        return members

    def add(self, members: set[str], sop_instance_uid: str) -> None:
        """Add a stored instance to a set :meth:`get` returned (under the same lock as readers)."""
        with self._lock:
            members.add(sop_instance_uid)

    def forget(self, series_uid: str) -> None:
        """Drop what memory holds about a series (its folder is read again next time)."""
        with self._lock:
            self._members.pop(series_uid, None)


class FreeSpace:
    """Free bytes on a folder's file system, read again only when the cached value may be stale."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._free_at = float("-inf")      # monotonic time of the last statvfs
        self._free = 0                     # free bytes then
        self._written = 0                  # bytes stored since

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` were stored since the last read (subtracted from the cached value)."""
        with self._lock:
            self._written += nbytes

    def bytes(self) -> int:
        """Free bytes (0 when they cannot be read), read again at most every
        ``FREE_SPACE_MAX_AGE_S`` or ``FREE_SPACE_MAX_WRITTEN`` bytes stored, minus what was
        stored since."""
        now = time.monotonic()
        with self._lock:
            if now - self._free_at < FREE_SPACE_MAX_AGE_S and self._written < FREE_SPACE_MAX_WRITTEN:
                return max(self._free - self._written, 0)
        try:
            free = int(shutil.disk_usage(self.folder).free)
        except OSError:
            free = 0
        with self._lock:
            self._free, self._free_at, self._written = free, now, 0
        return free


def scan(folder: Path) -> set[str]:
    """SOP Instance UIDs of the ``.dcm`` files in a series folder (empty when there is none)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name[:-4] for e in entries if e.name.endswith(".dcm") and not e.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        return set()
