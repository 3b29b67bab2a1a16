"""The DICOM SCP: C-ECHO, and C-STORE of CT into the durable spool.

Handlers are bound with their dependencies (spool, completion watcher) as extra arguments,
return an explicit DIMSE status for every expected failure and never let an exception
escape. The C-STORE handler only parses UIDs and writes bytes; decoding happens in the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from ..config import CallingAE, NodeSettings
from ..errors import SpoolError
from .completion import CompletionWatcher
from .spool import Spool, StoreOutcome, header_from_dataset

log = logging.getLogger(__name__)

#: The CT storage SOP classes we accept.
CT_STORAGE_CLASSES: tuple[UID, ...] = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)
#: Uncompressed and lossless compressed syntaxes we can decode later in the worker.
CT_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0xC211


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: always success."""
    return SUCCESS


def handle_store(event: evt.Event, spool: Spool, watcher: CompletionWatcher) -> int:
    """C-STORE: spool the instance durably, tell completion, answer an explicit status."""
    try:
        header = header_from_dataset(event.dataset)
    except Exception as exc:  # malformed header: the peer's data, not our fault
        log.warning("refused an instance from %s: %s", _peer(event), exc)
        return CANNOT_UNDERSTAND
    if header.sop_class_uid != event.context.abstract_syntax:
        log.warning(
            "refused instance %s: SOP Class %s does not match its presentation context %s",
            header.sop_instance_uid, header.sop_class_uid, event.context.abstract_syntax,
        )
        return CANNOT_UNDERSTAND
    try:
        outcome = spool.store(event.encoded_dataset(), header)
    except SpoolError as exc:
        log.error("answered 0xA700 (out of resources): %s", exc)
        return OUT_OF_RESOURCES
    except Exception:  # never let an exception escape into pynetdicom
        log.exception("unexpected error storing instance %s", header.sop_instance_uid)
        return PROCESSING_FAILURE
    if outcome is not StoreOutcome.DUPLICATE:
        try:
            watcher.instance_received(header.series_uid, header.study_uid, id(event.assoc))
        except Exception:  # the instance is durable; the series is re-detected on restart
            log.exception("could not record series %s for completion", header.series_uid)
    return SUCCESS


def handle_requested(event: evt.Event, allowed: Sequence[CallingAE]) -> None:
    """A-ASSOCIATE-RQ: reject callers that are not on the allow-list (AE title and host)."""
    primitive = event.assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip()
    host = event.assoc.requestor.address
    if not allowed or any(
        a.ae_title == calling and (a.host is None or a.host == host) for a in allowed
    ):
        return
    log.warning(
        "rejected association from calling AE %r at %s: not in calling_aes of the config",
        calling, host,
    )
    event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE unknown
    event.assoc.is_rejected = True
    event.assoc.kill()


def handle_accepted(event: evt.Event) -> None:
    """Log the SOP classes / transfer syntaxes we refused on an accepted association."""
    for context in event.assoc.rejected_contexts:
        log.warning(
            "refused presentation context from %s: SOP Class %s (%s) with transfer syntaxes %s"
            " is not supported; this node accepts CT storage only",
            _peer(event), context.abstract_syntax, getattr(context.abstract_syntax, "name", ""),
            ", ".join(context.transfer_syntax),
        )


def handle_closed(event: evt.Event, watcher: CompletionWatcher) -> None:
    """Connection closed (release, abort or loss): the association's series may complete."""
    watcher.association_closed(id(event.assoc))


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
    ) -> None:
        self.settings = settings
        self._ae = build_ae(settings)
        self._handlers = [
            (evt.EVT_REQUESTED, handle_requested, [list(calling_aes)]),
            (evt.EVT_ACCEPTED, handle_accepted),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [spool, watcher]),
            (evt.EVT_CONN_CLOSE, handle_closed, [watcher]),
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
        self._server = self._ae.start_server(address, block=False, evt_handlers=self._handlers)
        log.info(
            "listening as %s on %s:%d", self.settings.ae_title, self.settings.bind_address, self.port
        )

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._ae.shutdown()
