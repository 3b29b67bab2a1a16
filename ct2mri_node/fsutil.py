"""Durable file writes, in one place: temporary file, fsync, ``os.replace``, folder fsync.

A rename is only durable once the folder holding it is fsynced, so :func:`atomic_write`
fsyncs the folder too unless the caller batches many renames and fsyncs the folder once
(:func:`fsync_dir`). A crash leaves either the old file or the new one, never a partial one;
at worst a ``.tmp-*`` file remains, which readers of these folders ignore.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: Prefix of temporary files; readers skip names that start with a dot.
TMP_PREFIX = ".tmp-"


def write_temporary(data: bytes, folder: Path, *, suffix: str = "", sync: bool = True) -> Path:
    """Write ``data`` to a new temporary file in ``folder`` (fsynced when ``sync``); its path.

    The file is removed again if writing fails, so an error leaves nothing behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename, fsync of the folder.

    ``sync_dir=False`` leaves the folder fsync to the caller (one :func:`fsync_dir` after a
    batch of writes); until then the new name may be lost in a crash, the old content not.
    """
    tmp = write_temporary(data, path.parent)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def fsync_path(path: Path) -> None:
    """Flush a closed file's data to disk (through a new descriptor, which Linux honours)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the renames and new names in ``folder`` durable."""
    fsync_path(folder)
