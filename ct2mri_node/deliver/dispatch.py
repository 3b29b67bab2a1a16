"""Which sender a destination gets: the one place that knows every kind of destination.

Imports run one way: this module imports the senders (``send`` for DICOM, ``dicomweb``,
``folder``), each sender imports only the shared :class:`~.report.SendReport` and its own
config type, and the worker and the health checks import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import AnyDestination, DicomWebDestination, FolderDestination
from ..errors import SendError
from .dicomweb import echo_dicomweb, send_dicomweb
from .folder import send_folder
from .report import SendReport
from .send import echo_dicom, send_dicom

__all__ = ["SendReport", "echo", "send_series"]


def send_series(destination: AnyDestination, files: Sequence[Path], calling_ae: str) -> SendReport:
    """Deliver ``files`` (one series) to ``destination``; SendError on any failure."""
    if not files:
        raise SendError(f"nothing to send to {destination.name}: the series has no files", permanent=True)
    if isinstance(destination, FolderDestination):
        return send_folder(destination, files)
    if isinstance(destination, DicomWebDestination):
        return send_dicomweb(destination, files)
    return send_dicom(destination, files, calling_ae)


def echo(destination: AnyDestination, calling_ae: str) -> None:
    """C-ECHO a DICOM destination, QIDO-RS a DICOMweb one; SendError says what failed. A folder
    destination has nothing to ask (its checks are the health module's)."""
    if isinstance(destination, DicomWebDestination):
        echo_dicomweb(destination)
    elif isinstance(destination, FolderDestination):
        raise SendError(f"destination {destination.name} is a folder; there is no peer to echo", permanent=True)
    else:
        echo_dicom(destination, calling_ae)
