"""A small HTTP server for operations: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

``/healthz`` answers 200 while the process serves HTTP (liveness). ``/readyz`` answers 200 only
when the model is loaded, the spool is writable and every destination is reachable (C-ECHO for
DICOM peers, a writable folder for folder destinations), else 503; both return JSON saying
which check failed and why, so an orchestrator's probe log tells the operator what to fix.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..config import DicomDestination, FolderDestination, NodeConfig
from ..deliver.send import echo
from ..errors import Ct2MriError
from ..fsutil import write_temporary
from .metrics import CONTENT_TYPE, NodeMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One readiness check's outcome."""

    name: str
    ok: bool
    detail: str = ""


def check_writable(folder: Path, name: str) -> Check:
    """Create, fsync and delete a small file in ``folder``."""
    try:
        write_temporary(b"ok", folder).unlink()
    except OSError as exc:
        return Check(name, False, f"{folder} is not writable: {exc.strerror or exc}")
    return Check(name, True)


def check_destination(dest: DicomDestination | FolderDestination, calling_ae: str, timeout_s: float) -> Check:
    """C-ECHO a DICOM destination (with a short timeout) or test that a folder is writable."""
    name = f"destination:{dest.name}"
    if isinstance(dest, FolderDestination):
        try:
            dest.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Check(name, False, f"cannot create {dest.path}: {exc.strerror or exc}")
        return check_writable(dest.path, name)
    try:
        echo(dest.model_copy(update={"timeout_s": min(dest.timeout_s, timeout_s)}), calling_ae)
    except Ct2MriError as exc:
        return Check(name, False, str(exc))
    return Check(name, True)


def readiness(config: NodeConfig, model_loaded: Callable[[], bool]) -> list[Check]:
    """Every readiness check of a node with ``config``."""
    loaded = model_loaded()
    checks = [
        Check("model", loaded, "" if loaded else "the model is not loaded yet"),
        check_writable(config.spool_dir, "spool") if config.spool_dir.is_dir()
        else Check("spool", False, f"spool folder {config.spool_dir} does not exist"),
    ]
    checks += [check_destination(d, config.node.ae_title, config.ops.echo_timeout_s) for d in config.destinations]
    return checks


class _Handler(BaseHTTPRequestHandler):
    server: _OpsHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.exposition(), CONTENT_TYPE)
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            checks = readiness(self.server.config, self.server.model_loaded)
            ready = all(c.ok for c in checks)
            body = {"status": "ready" if ready else "not ready",
                    "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
            self._json(200 if ready else 503, body)
        else:
            self._json(404, {"error": f"no such endpoint {path}; try /metrics, /healthz or /readyz"})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base)
        log.debug("http %s - %s", self.address_string(), format % args)


class _OpsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: NodeConfig, metrics: NodeMetrics,
                 model_loaded: Callable[[], bool]) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.metrics = metrics
        self.model_loaded = model_loaded


class HealthServer:
    """Serves /metrics, /healthz and /readyz on ``ops.http_bind_address:ops.http_port``."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics, model_loaded: Callable[[], bool]) -> None:
        port = config.ops.http_port
        address = (config.ops.http_bind_address, 0 if port is None else port)
        self._server = _OpsHTTPServer(address, config, metrics, model_loaded)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (``ops.http_port: 0`` picks a free one)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="ct2mri-http", daemon=True)
        self._thread.start()
        log.info("operations endpoint on http://%s:%d (/metrics /healthz /readyz)",
                 self._server.server_address[0], self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
