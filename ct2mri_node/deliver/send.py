"""Destinations: send a written MR series to a DICOM peer (C-STORE) or a folder.

Every C-STORE response is checked: only 0x0000 counts as stored. A warning or failure status,
a lost connection or a missing response raises :class:`SendError`; ``permanent`` says whether
retrying can help (an association rejected by the peer, a refused SOP class, a warning or a
failure other than out-of-resources are permanent).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..config import DicomDestination, FolderDestination
from ..errors import SendError
from ..fsutil import atomic_write, fsync_dir
from ..tcp import NO_DELAY_HANDLERS

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SendReport:
    """What a successful send delivered."""

    destination: str
    instances: int
    seconds_to_first: float | None = None   # from the start of the send to the first stored instance


def send_series(
    destination: DicomDestination | FolderDestination, files: Sequence[Path], calling_ae: str
) -> SendReport:
    """Deliver ``files`` (one series) to ``destination``; SendError on any failure."""
    if not files:
        raise SendError(f"nothing to send to {destination.name}: the series has no files", permanent=True)
    if isinstance(destination, FolderDestination):
        return send_folder(destination, files)
    return send_dicom(destination, files, calling_ae)


# -- folder -----------------------------------------------------------------------------
def send_folder(destination: FolderDestination, files: Sequence[Path]) -> SendReport:
    """Copy the series to ``<path>/<series uid>/`` atomically, file by file."""
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    target = destination.path / series_uid
    try:
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            atomic_write(target / path.name, path.read_bytes(), sync_dir=False)
        fsync_dir(target)
    except OSError as exc:
        raise SendError(
            f"cannot write to folder destination {destination.name} ({target}): {exc.strerror or exc}"
        ) from exc
    log.info("wrote %d instances to folder destination %s", len(files), destination.name)
    return SendReport(destination.name, len(files))


# -- DICOM ------------------------------------------------------------------------------
def _contexts(files: Sequence[Path]) -> set[tuple[UID, UID]]:
    """The (SOP class, transfer syntax) pairs the files need."""
    pairs = set()
    for path in files:
        meta = pydicom.filereader.read_file_meta_info(path)
        pairs.add((UID(meta.MediaStorageSOPClassUID), UID(meta.TransferSyntaxUID)))
    return pairs


def _offered_syntaxes(syntax: UID) -> list[UID]:
    """The file's own syntax, and Implicit VR Little Endian beside Explicit VR Little Endian
    (the DICOM default every peer accepts); pynetdicom re-encodes a file for whichever the peer
    accepted."""
    if syntax == ExplicitVRLittleEndian:
        return [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return [syntax]


def _client_ae(calling_ae: str, destination: DicomDestination) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = destination.timeout_s
    ae.dimse_timeout = destination.timeout_s
    ae.network_timeout = destination.timeout_s
    return ae


def _tls_args(destination: DicomDestination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for a destination with ``tls`` configured."""
    if destination.tls is None:
        return None
    from ..security import client_context

    return client_context(destination.tls), destination.tls.server_hostname or destination.host


def _associate(ae: AE, destination: DicomDestination) -> Association:
    """Open an association; a permanent rejection is permanent, anything else is transient."""
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title, tls_args=_tls_args(destination),
        evt_handlers=list(NO_DELAY_HANDLERS),
    )
    if assoc.is_established:
        return assoc
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        detail = ", ".join(
            str(getattr(rsp, name, "")) for name in ("result_str", "source_str", "reason_str")
            if getattr(rsp, name, None)
        )
        if getattr(rsp, "result", None) == 0x02:   # rejected-transient (e.g. too many associations)
            raise SendError(f"destination {where} is busy: association rejected for now ({detail})")
        raise SendError(
            f"destination {where} rejected the association ({detail}); check that it knows our "
            "AE title and that its AE title is right in the config",
            permanent=True,
        )
    raise SendError(
        f"cannot connect to destination {where}: no association (peer down or unreachable"
        f"{', or the TLS handshake failed' if destination.tls else ''})"
    )


def _check_status(status: pydicom.Dataset, path: Path, destination: DicomDestination) -> None:
    """Raise unless the C-STORE response says 0x0000 (warnings are failures too)."""
    code = getattr(status, "Status", None)
    if code is None:
        raise SendError(f"no C-STORE response from {destination.name} for {path.name} (timeout or lost connection)")
    if code == 0x0000:
        return
    kind = "warning" if code in (0x0001, 0xB000, 0xB006, 0xB007) else "failure"
    comment = str(status.get("ErrorComment", "")).strip()
    message = f"destination {destination.name} answered {kind} 0x{code:04X} for {path.name}"
    if comment:
        message += f" ({comment})"
    raise SendError(message, permanent=not 0xA700 <= code <= 0xA7FF)


def send_dicom(destination: DicomDestination, files: Sequence[Path], calling_ae: str) -> SendReport:
    """C-STORE every file on one association, checking every response status."""
    ae = _client_ae(calling_ae, destination)
    for sop_class, syntax in sorted(_contexts(files)):
        ae.add_requested_context(sop_class, _offered_syntaxes(syntax))
    assoc = _associate(ae, destination)
    start = time.perf_counter()
    first: float | None = None
    try:
        for path in files:
            try:
                status = assoc.send_c_store(path)
            except ValueError as exc:  # no accepted presentation context for this file
                raise SendError(
                    f"destination {destination.name} does not accept {path.name}: {exc}", permanent=True
                ) from exc
            _check_status(status, path, destination)
            if first is None:
                first = time.perf_counter() - start
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("stored %d instances at destination %s", len(files), destination.name)
    return SendReport(destination.name, len(files), first)


def echo(destination: DicomDestination, calling_ae: str) -> None:
    """C-ECHO a DICOM destination; SendError says what failed."""
    ae = _client_ae(calling_ae, destination)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, destination)
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        shown = "no response" if code is None else f"status 0x{code:04X}"
        raise SendError(f"C-ECHO to {destination.name} failed: {shown}")
