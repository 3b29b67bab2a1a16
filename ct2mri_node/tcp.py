"""TCP settings for every DICOM association the node opens (sends, echoes) or accepts (the SCP).

DIMSE writes a small command PDU and then the data set. With Nagle's algorithm the second write
waits for the peer's delayed ACK (~40 ms on Linux) whenever the first is still unacknowledged,
so every C-STORE of a small instance stalls: 20 instances of 64x64 took 1.03 s to a pynetdicom
SCP, 0.15 s with ``TCP_NODELAY``. dcmtk reads the ``TCP_NODELAY`` environment variable for the
same reason; pynetdicom has no such switch, so the node sets it on each connection.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

log = logging.getLogger(__name__)


def no_delay(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: turn Nagle's algorithm off on the association's socket."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:   # not fatal: the association works, only slower
        log.debug("could not set TCP_NODELAY: %s", exc)


#: The handler list to pass as ``evt_handlers`` (or to add to an SCP's handlers).
NO_DELAY_HANDLERS = [(evt.EVT_CONN_OPEN, no_delay)]
