"""DICOM destinations: send a written MR series (and its companions) to a DICOM peer by C-STORE.

Which sender a destination gets is :mod:`.dispatch`'s job; this module knows only DICOM.

The companion objects (Parametric Map uncertainty map, Secondary Capture QA image) are optional
for a peer: one that accepts MR but rejects their presentation context still gets the MR, the
companion is skipped with a warning and :class:`SendReport` ``skipped`` says so.

Every C-STORE response status is classified with pynetdicom's ``code_to_category``. Success
and Warning (e.g. 0xB000 coercion, 0xB006 element discarded, 0xB007 data set does not match
SOP class) mean the archive stored the instance: a warning is logged with its Error Comment /
Offending Element and the instance is not sent again. A Failure, a Cancel, a Pending or an
unknown status, a lost connection or a missing response raises :class:`SendError`;
``permanent`` says whether retrying can help (out of resources 0xA7xx, a cancel, no response
and a transient association rejection are transient; any other failure, a status C-STORE does
not define, a permanent rejection and a refused SOP class are permanent).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import (
    STATUS_CANCEL,
    STATUS_FAILURE,
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from ..config import DicomDestination
from ..errors import SendError
from ..tcp import NO_DELAY_HANDLERS
from .coerce import read_coerced
from .report import SendReport

log = logging.getLogger(__name__)

#: SOP classes a peer may refuse without failing the send: the companions of the MR series.
OPTIONAL_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map Storage (uncertainty map)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage (QA image)",
}


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


def _status_text(code: int, status: pydicom.Dataset) -> str:
    """``0xB000 (Coercion of Data Elements)`` plus the peer's Error Comment and Offending Element."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", ""))[1]
    text = f"0x{code:04X}" + (f" ({meaning})" if meaning else "")
    comment = str(status.get("ErrorComment", "") or "").strip()
    if comment:
        text += f", error comment {comment!r}"
    offending = status.get("OffendingElement")
    if offending:
        tags = offending if isinstance(offending, list | tuple | MultiValue) else [offending]
        text += ", offending element(s) " + " ".join(str(Tag(t)) for t in tags)
    return text


def _check_status(status: pydicom.Dataset, path: Path, destination: DicomDestination) -> bool:
    """Classify one C-STORE response: True when stored with a warning, False when stored
    cleanly; SendError (``permanent`` set when retrying cannot help) when not stored."""
    code = getattr(status, "Status", None)
    if code is None:
        raise SendError(f"no C-STORE response from {destination.name} for {path.name} (timeout or lost connection)")
    category = code_to_category(int(code))
    if category == STATUS_SUCCESS:
        return False
    described = _status_text(int(code), status)
    if category == STATUS_WARNING:   # the archive stored it (possibly coerced): never send it again
        log.warning("destination %s stored %s with warning %s", destination.name, path.name, described)
        return True
    prefix = f"destination {destination.name} answered"
    if category == STATUS_FAILURE:
        raise SendError(f"{prefix} failure {described} for {path.name}",
                        permanent=not 0xA700 <= code <= 0xA7FF)   # out of resources: try again later
    if category == STATUS_CANCEL:
        raise SendError(f"{prefix} cancel {described} for {path.name}: not stored; sending again later")
    if category == STATUS_PENDING:
        raise SendError(f"{prefix} pending {described} for {path.name}, a status C-STORE does not define;"
                        " the instance is not known to be stored", permanent=True)
    raise SendError(f"{prefix} unknown status {described} for {path.name}; the instance is not known to be"
                    " stored (check the archive's conformance statement)", permanent=True)


def send_dicom(destination: DicomDestination, files: Sequence[Path], calling_ae: str) -> SendReport:
    """C-STORE every file on one association, checking every response status."""
    ae = _client_ae(calling_ae, destination)
    contexts = _contexts(files)
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, _offered_syntaxes(syntax))
    assoc = _associate(ae, destination)
    start = time.perf_counter()
    first: float | None = None
    warnings = 0
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    skipped = sorted({sop for sop, _ in contexts if sop in OPTIONAL_SOP_CLASSES and sop not in accepted})
    for sop in skipped:
        log.warning("destination %s does not accept %s: not sent there (the MR series is)",
                    destination.name, OPTIONAL_SOP_CLASSES[sop])
    sending = [p for p in files if not skipped or _sop_class(p) not in skipped]
    try:
        for path in sending:
            try:
                status = assoc.send_c_store(read_coerced(path, destination.coerce) if destination.coerce else path)
            except ValueError as exc:  # no accepted presentation context for this file
                raise SendError(
                    f"destination {destination.name} does not accept {path.name}: {exc}", permanent=True
                ) from exc
            warnings += _check_status(status, path, destination)
            if first is None:
                first = time.perf_counter() - start
    finally:
        if assoc.is_established:
            assoc.release()
    if warnings:
        log.warning("stored %d instances at destination %s, %d of them with a warning status",
                    len(sending), destination.name, warnings)
    else:
        log.info("stored %d instances at destination %s", len(sending), destination.name)
    return SendReport(destination.name, len(sending), first, warnings,
                      tuple(OPTIONAL_SOP_CLASSES[s] for s in skipped))


def _sop_class(path: Path) -> str:
    return str(pydicom.filereader.read_file_meta_info(path).MediaStorageSOPClassUID)


def echo_dicom(destination: DicomDestination, calling_ae: str) -> None:
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
