"""Crash-safe removal of spool folders (retention's received CT and job outputs).

A folder is first renamed to a hidden ``.purge-<name>-<random>`` in the same parent (readers
skip dot names), the parent fsynced, then deleted; :func:`remove_leftovers` deletes what a crash
left hidden. A crash therefore never leaves half a series or half an MR series visible.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import SpoolError
from ..fsutil import fsync_dir

log = logging.getLogger(__name__)

#: Prefix of a folder being removed (renamed first, so a crash never leaves half a series visible).
PURGE_PREFIX = ".purge-"


def hide(folder: Path) -> Path | None:
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


def unhide(hidden: Path, folder: Path) -> None:
    """Put a hidden folder back (a removal that was not confirmed)."""
    try:
        os.rename(hidden, folder)
        fsync_dir(folder.parent)
    except OSError as exc:
        raise SpoolError(f"cannot restore {folder} from {hidden}: {exc.strerror or exc}") from exc


def erase(hidden: Path) -> None:
    """Delete a hidden folder (what is already gone is fine)."""
    def gone_is_fine(func: Callable[..., object], path: str, exc_info: object) -> None:
        if not isinstance(exc_info, tuple) or not isinstance(exc_info[1], FileNotFoundError):
            raise SpoolError(f"cannot delete {path} from the spool; fix its permissions")

    if hidden.is_dir():
        shutil.rmtree(hidden, onerror=gone_is_fine)
    else:
        hidden.unlink(missing_ok=True)


def remove_folder(folder: Path) -> bool:
    """Hide then delete ``folder``; True when it existed."""
    hidden = hide(folder)
    if hidden is None:
        return False
    erase(hidden)
    return True


def remove_leftovers(parents: Iterable[Path]) -> int:
    """Delete the hidden folders a crash left mid-removal (``.purge-*``) in ``parents``; how many."""
    count = 0
    for parent in parents:
        if not parent.is_dir():
            continue
        for path in parent.iterdir():
            if path.name.startswith(PURGE_PREFIX):
                erase(path)
                count += 1
    if count:
        log.info("removed %d folder(s) left half-removed in the spool", count)
    return count
