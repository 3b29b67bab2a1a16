"""Durable file writes, in one place: temporary file, fdatasync, ``os.replace``, folder fsync.

A rename is only durable once the folder holding it is fsynced, so :func:`atomic_write`
fsyncs the folder too unless the caller batches many renames and fsyncs the folder once
(:func:`fsync_dir`). A crash leaves either the old file or the new one, never a partial one;
at worst a ``.tmp-*`` file remains, which readers of these folders ignore.

Data may be given as several buffers (e.g. file meta and the received data set as a
``memoryview``): they are written with one ``writev`` instead of being joined in memory first.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Union

log = logging.getLogger(__name__)

#: Prefix of temporary files; readers skip names that start with a dot.
TMP_PREFIX = ".tmp-"

#: One buffer, or several written back to back.
Data = Union[bytes, bytearray, memoryview, Sequence[Union[bytes, bytearray, memoryview]]]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def write_temporary(data: Data, folder: Path, *, suffix: str = "", sync: bool = True) -> Path:
    """Write ``data`` to a new temporary file in ``folder`` (synced when ``sync``); its path.

    The file is removed again if writing fails, so an error leaves nothing behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    _write_fd(fd, tmp, data, sync)
    return Path(tmp)


def atomic_write(path: Path, data: Data, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` durably: temp file, fdatasync, rename, fsync of the folder.

    The temporary name is derived from the target, the process and the thread, so no
    random-name search is needed (two writers of one name in one thread cannot overlap; a
    stale one left by a crash is overwritten). ``sync_dir=False`` leaves the folder fsync to
    the caller (one :func:`fsync_dir` after a batch of writes); until then the new name may be
    lost in a crash, the old content not.
    """
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}")
    _write_fd(os.open(tmp, _FLAGS, 0o600), tmp, data, True)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(Path(folder))


def buffers(data: Data) -> list[memoryview]:
    """``data`` as a list of byte views (one for a single buffer), without copying."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [memoryview(data)]
    return [memoryview(part) for part in data]


def _write_fd(fd: int, name: str, data: Data, sync: bool) -> None:
    """Write every byte of ``data`` to the open ``fd``, sync it, close it; unlink on failure."""
    try:
        try:
            buffers_left = buffers(data)
            while buffers_left:
                written = os.writev(fd, buffers_left)
                while buffers_left and written >= buffers_left[0].nbytes:
                    written -= buffers_left[0].nbytes
                    buffers_left.pop(0)
                if buffers_left and written:
                    buffers_left[0] = buffers_left[0][written:]
            if sync:
                os.fdatasync(fd)   # data and the size needed to read it back; the name: fsync_dir
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


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


def try_lock(path: Path) -> IO[str] | None:
    """Open ``path`` (created if missing) and take an exclusive ``flock`` on it without waiting.

    Returns the open file, which holds the lock until it is closed (or the process ends), or
    None when another open file holds it; callers say in their own words who holds it. An
    ``OSError`` opening the file, or from ``flock`` for any reason but a held lock, propagates.
    """
    handle = open(path, "a", encoding="utf-8")   # noqa: SIM115 (held open while the lock is held)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle
