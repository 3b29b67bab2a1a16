"""Folder destinations: write a written MR series (and its companions) as files into a folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom

from ..config import FolderDestination
from ..errors import SendError
from ..fsutil import atomic_write, fsync_dir
from .coerce import coerced_bytes
from .report import SendReport
from .uids import is_valid_uid

log = logging.getLogger(__name__)


def send_folder(destination: FolderDestination, files: Sequence[Path]) -> SendReport:
    """Copy each file to ``<path>/<its series uid>/`` atomically (the MR series and each
    companion in its own folder), file by file, with the destination's coercion applied."""
    by_series: dict[str, list[Path]] = {}
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                  .SeriesInstanceUID)
        if not is_valid_uid(uid):
            raise SendError(f"{path.name} has an invalid Series Instance UID {uid!r}", permanent=True)
        by_series.setdefault(uid, []).append(path)
    target = destination.path
    try:
        for series_uid, paths in by_series.items():
            target = destination.path / series_uid
            target.mkdir(parents=True, exist_ok=True)
            for path in paths:
                atomic_write(target / path.name, coerced_bytes(path, destination.coerce), sync_dir=False)
            fsync_dir(target)
    except OSError as exc:
        raise SendError(
            f"cannot write to folder destination {destination.name} ({target}): {exc.strerror or exc}"
        ) from exc
    log.info("wrote %d instances (%d series) to folder destination %s", len(files), len(by_series),
             destination.name)
    return SendReport(destination.name, len(files))
