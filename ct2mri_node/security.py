"""DICOM TLS (PS3.15 Annex B.1 profile, TLS 1.2+): SSL contexts for the SCP and for destinations.

Certificates, keys and CA bundles come from the YAML config (``node.tls``, a destination's
``tls``). The server context requires client certificates when a CA is configured; the client
context always verifies the peer against the configured CA and host name.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from .config import ClientTls, ServerTls
from .errors import ConfigError

log = logging.getLogger(__name__)


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, what: str) -> None:
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the {what} certificate {cert} with key {key}: {exc}; "
            "check the paths and that the key matches the certificate (PEM files)"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path, what: str) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the {what} CA bundle {ca}: {exc}; give a PEM file") from None


def server_context(tls: ServerTls) -> ssl.SSLContext:
    """The SCP's context: our certificate; callers' certificates checked against ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, tls.cert, tls.key, "node")
    if tls.ca is not None:
        _load_ca(context, tls.ca, "client")
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """A destination's context: verify its certificate and host name; send ours if configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, tls.ca, "destination")
    if tls.cert is not None and tls.key is not None:
        _load_chain(context, tls.cert, tls.key, "client")
    return context
