"""The DICOM SCP: C-ECHO, and C-STORE of CT into the durable spool.

Handlers are bound with their dependencies (spool, completion watcher) as extra arguments,
return an explicit DIMSE status for every expected failure and never let an exception
escape. The C-STORE handler only parses UIDs and writes bytes; decoding happens in the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from ..config import CallingAE, LimitSettings, NodeSettings
from ..errors import SpoolError
from ..faults import fault_point
from ..tcp import NO_DELAY_HANDLERS
from .completion import CompletionWatcher
from .spool import InstanceHeader, Spool, StoreOutcome, header_from_dataset

log = logging.getLogger(__name__)

#: The CT storage SOP classes we accept.
CT_STORAGE_CLASSES: tuple[UID, ...] = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)
#: Uncompressed and lossless compressed syntaxes we can decode later in the worker.
CT_LOSSLESS_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
)
#: Lossy syntaxes with a licence-clean decoder here (GDCM, pyjpegls, OpenJPEG); the MR series
#: then says ``LossyImageCompression`` 01. JPEG Extended (12-bit) is left out: no decoder here
#: reads it, so a peer must fall back to a syntax we can decode.
CT_LOSSY_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,
    JPEGLSNearLossless,
    JPEG2000,
)
#: Every syntax the SCP accepts for CT: lossless ones first (preferred when a peer offers several).
CT_TRANSFER_SYNTAXES: tuple[UID, ...] = CT_LOSSLESS_SYNTAXES + CT_LOSSY_SYNTAXES

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0xC211

#: A-ASSOCIATE-RJ (result, source, diagnostic) pynetdicom sends when ``maximum_associations``
#: acceptor associations are already open: rejected-transient, service provider (presentation),
#: local limit exceeded.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


_MB = 1024 * 1024

#: The largest P-DATA PDU we accept. pynetdicom's default (16 KiB) makes a sender cut a
#: 512x512 slice into ~32 PDUs, each handled in Python; 1 MiB lets senders use larger ones,
#: which measured ~1.3x the images/s over one association (benchmarks/ingest.py).
MAX_PDU_BYTES = _MB


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment (64 characters at most) the sender can log."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


@dataclass(frozen=True)
class Admission:
    """Backpressure checks made before an instance is accepted (limits from the config)."""

    limits: LimitSettings
    backlog: Callable[[], int] = lambda: 0   # jobs queued now (the job store, wired by node.py)
    #: jobs of one calling AE queued now (the job store, wired by node.py)
    backlog_of: Callable[[str], int] = lambda calling_ae: 0

    def before_parse(self, event: evt.Event, spool: Spool) -> Dataset | None:
        """Size and free-disk checks: a refusal status, or None to go on."""
        size = _dataset_size(event)
        if size > self.limits.max_instance_mb * _MB:
            log.warning("answered 0xA700 to %s: instance of %.1f MB exceeds limits.max_instance_mb=%g",
                        _peer(event), size / _MB, self.limits.max_instance_mb)
            return _status(OUT_OF_RESOURCES, "instance larger than the node accepts")
        free = spool.free_bytes()
        if free < self.limits.min_free_disk_mb * _MB:
            log.error("answered 0xA700 to %s: %.0f MB free in the spool, below limits.min_free_disk_mb=%g;"
                      " free disk space", _peer(event), free / _MB, self.limits.min_free_disk_mb)
            return _status(OUT_OF_RESOURCES, "spool disk below its free-space watermark")
        return None

    def after_parse(self, event: evt.Event, spool: Spool, header: InstanceHeader) -> Dataset | None:
        """Per-series and queue checks for a parsed instance: a refusal status, or None."""
        count = spool.instance_count(header.series_uid)
        if count == 0 and self.backlog() >= self.limits.max_queued_jobs:
            log.warning("answered 0xA700 to %s for new series %s: %d jobs queued (limits.max_queued_jobs)",
                        _peer(event), header.series_uid, self.limits.max_queued_jobs)
            return _status(OUT_OF_RESOURCES, "too many series queued; send again later")
        if count == 0:
            calling, share = _calling_ae(event), self.limits.queued_jobs_per_ae
            if self.backlog_of(calling) >= share:
                log.warning("answered 0xA700 to %s for new series %s: %d of its series queued"
                            " (limits.max_queued_jobs_per_ae)", _peer(event), header.series_uid, share)
                return _status(OUT_OF_RESOURCES, "this AE has its share of the queue; send again later")
        if count >= self.limits.max_instances_per_series and not spool.has_instance(header):
            log.warning("answered 0xA700 to %s: series %s already has %d instances"
                        " (limits.max_instances_per_series)", _peer(event), header.series_uid, count)
            return _status(OUT_OF_RESOURCES, "series has more instances than the node accepts")
        return None


def _dataset_size(event: evt.Event) -> int:
    """Bytes of the received data set, without decoding it."""
    data = event.request.DataSet
    if isinstance(data, BytesIO):
        return int(data.getbuffer().nbytes)
    position = data.tell()          # a file when pynetdicom receives in chunks
    end = int(data.seek(0, 2))
    data.seek(position)
    return end


@contextmanager
def _encoded_parts(event: evt.Event) -> Iterator[list[bytes | memoryview]]:
    """The instance as a DICOM file, as buffers: preamble + file meta, then the data set as sent.

    The data set is a view of pynetdicom's receive buffer, so the ~0.5 MB of a CT slice is not
    copied twice (``encoded_dataset()`` copies it out and then joins it with the meta).
    """
    data = event.request.DataSet
    if not isinstance(data, BytesIO):   # received in chunks to a file: pynetdicom reads it
        yield [event.encoded_dataset()]
        return
    meta = b"".join((b"\x00" * 128, b"DICM", encode_file_meta(event.file_meta)))
    with data.getbuffer() as view:
        yield [meta, view]


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: always success."""
    return SUCCESS


def handle_store(
    event: evt.Event, spool: Spool, watcher: CompletionWatcher, admission: Admission | None = None
) -> int | Dataset:
    """C-STORE: spool the instance durably, tell completion, answer an explicit status."""
    admission = admission or Admission(LimitSettings(min_free_disk_mb=0))
    refusal = admission.before_parse(event, spool)
    if refusal is not None:
        return refusal
    try:
        header = header_from_dataset(event.dataset)
    except Exception as exc:  # malformed header: the peer's data, not our fault
        log.warning("refused an instance from %s: %s", _peer(event), exc)
        return _status(CANNOT_UNDERSTAND, f"cannot understand: {exc}")
    refusal = admission.after_parse(event, spool, header)
    if refusal is not None:
        return refusal
    if header.sop_class_uid != event.context.abstract_syntax:
        log.warning(
            "answered 0xA900 to %s for instance %s: SOP Class %s does not match its presentation context %s",
            _peer(event), header.sop_instance_uid, header.sop_class_uid, event.context.abstract_syntax,
        )
        return _status(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "data set SOP Class UID differs from the context's")
    try:
        with _encoded_parts(event) as parts:
            outcome = spool.store(parts, header)
    except SpoolError as exc:
        log.error("answered 0xA700 (out of resources): %s", exc)
        return OUT_OF_RESOURCES
    except Exception:  # never let an exception escape into pynetdicom
        log.exception("unexpected error storing instance %s", header.sop_instance_uid)
        return PROCESSING_FAILURE
    try:
        if outcome is StoreOutcome.DUPLICATE:   # a re-send keeps a pending series open
            watcher.touch(header.series_uid, id(event.assoc))
        else:
            watcher.instance_received(header.series_uid, header.study_uid, id(event.assoc),
                                      calling_ae=_calling_ae(event))
    except Exception:  # the instance is durable; the series is re-detected on restart
        log.exception("could not record series %s for completion", header.series_uid)
    fault_point("mid_association")
    return SUCCESS


def handle_requested(event: evt.Event, allowed: Sequence[CallingAE]) -> None:
    """A-ASSOCIATE-RQ: reject callers not on the allow-list (AE title and host).

    The called AE title and the association limit are pynetdicom's own checks
    (``require_called_aet``, ``maximum_associations``), made after this handler;
    :func:`handle_rejected` logs what they turn away.
    """
    primitive = event.assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip()
    host = event.assoc.requestor.address
    if allowed and not any(
        a.ae_title == calling and (a.host is None or a.host == host) for a in allowed
    ):
        log.warning(
            "rejected association from calling AE %r at %s: not in calling_aes of the config",
            calling, host,
        )
        # pynetdicom skips its own negotiation once the handler has sent a rejection
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE unknown
        event.assoc.kill()


def handle_rejected(event: evt.Event) -> None:
    """EVT_REJECTED: log why pynetdicom turned a caller away, with its AE title and address.

    As acceptor, pynetdicom fires this after sending its own A-ASSOCIATE-RJ (association limit,
    called AE title); the result, source and diagnostic sent are in the acceptor's primitive.
    """
    assoc = event.assoc
    if not assoc.is_acceptor:
        return
    calling = str(assoc.requestor.ae_title).strip()
    host = assoc.requestor.address
    sent = assoc.acceptor.primitive
    rsd = (getattr(sent, "result", None), getattr(sent, "result_source", None), getattr(sent, "diagnostic", None))
    if rsd == LOCAL_LIMIT_EXCEEDED:
        log.warning(
            "rejected association from calling AE %r at %s: the node already has its limit of"
            " associations open (node.max_associations=%d); the caller may try again later",
            calling, host, assoc.ae.maximum_associations,
        )
    elif rsd == (0x01, 0x01, 0x07):
        log.warning(
            "rejected association from calling AE %r at %s: called AE title %r is not ours (node.ae_title=%s)",
            calling, host, str(assoc.requestor.primitive.called_ae_title).strip(), assoc.ae.ae_title,
        )
    else:
        log.warning(
            "rejected association from calling AE %r at %s: %s, %s, %s",
            calling, host, getattr(sent, "result_str", rsd[0]), getattr(sent, "source_str", rsd[1]),
            getattr(sent, "reason_str", rsd[2]),
        )


def handle_accepted(event: evt.Event) -> None:
    """Log, in one line per association, the SOP classes / transfer syntaxes we refused.

    SCUs such as dcmtk's storescu propose dozens of storage classes on every association; one
    line per refused context would bury the log, so refused contexts are grouped by SOP class.
    """
    refused: dict[str, set[str]] = {}
    for context in event.assoc.rejected_contexts:
        label = f"{context.abstract_syntax} ({getattr(context.abstract_syntax, 'name', '')})"
        refused.setdefault(label, set()).update(str(ts) for ts in context.transfer_syntax)
    if refused:
        log.warning(
            "refused presentation context(s) from %s for %d SOP class(es); this node accepts CT storage"
            " in the transfer syntaxes of its conformance statement only: %s",
            _peer(event), len(refused),
            "; ".join(f"{label} [{', '.join(sorted(ts))}]" for label, ts in sorted(refused.items())),
        )


def handle_closed(event: evt.Event, watcher: CompletionWatcher) -> None:
    """Connection closed (release, abort or loss): the association's series may complete."""
    watcher.association_closed(id(event.assoc))


def _calling_ae(event: evt.Event) -> str:
    """The calling AE title of the event's association (as the requestor sent it, trimmed)."""
    return str(event.assoc.requestor.ae_title).strip()


def _peer(event: evt.Event) -> str:
    req = event.assoc.requestor
    return f"{str(req.ae_title).strip() or '?'}@{req.address}"


def build_ae(settings: NodeSettings) -> AE:
    """Our AE with the supported contexts and timeouts from the config."""
    ae = AE(ae_title=settings.ae_title)
    for sop_class in CT_STORAGE_CLASSES:
        ae.add_supported_context(sop_class, list(CT_TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    return ae


class StoreSCP:
    """The listening node: an AE plus its bound handlers."""

    def __init__(
        self,
        settings: NodeSettings,
        calling_aes: Sequence[CallingAE],
        spool: Spool,
        watcher: CompletionWatcher,
        admission: Admission | None = None,
    ) -> None:
        self.settings = settings
        self._ae = build_ae(settings)
        self._handlers = [
            (evt.EVT_REQUESTED, handle_requested, [list(calling_aes)]),
            (evt.EVT_REJECTED, handle_rejected),
            (evt.EVT_ACCEPTED, handle_accepted),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [spool, watcher, admission]),
            (evt.EVT_CONN_CLOSE, handle_closed, [watcher]),
            *NO_DELAY_HANDLERS,
        ]
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0 in tests)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen without blocking; OSError (port in use) surfaces to the caller."""
        address = (self.settings.bind_address, self.settings.port)
        context = None
        if self.settings.tls is not None:
            from ..security import server_context

            context = server_context(self.settings.tls)
        self._server = self._ae.start_server(
            address, block=False, evt_handlers=self._handlers, ssl_context=context
        )
        log.info(
            "listening as %s on %s:%d%s", self.settings.ae_title, self.settings.bind_address, self.port,
            " (DICOM TLS only)" if context is not None else "",
        )

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._ae.shutdown()
