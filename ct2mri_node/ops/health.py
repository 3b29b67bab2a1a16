"""A small HTTP server for operations: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``,
and the status page (``/``, ``/jobs/<id>``: routes in :mod:`ct2mri_node.ops.web`).

``/healthz`` answers 200 while the process serves HTTP (liveness). ``/readyz`` answers whether
this process can accept and keep work (intake), 200 or 503: the model is loaded (roles that
translate), the spool's ``incoming/`` and ``output/`` folders are writable, free space on the
spool's file system is above ``limits.min_free_disk_mb`` and the job store answers a query.
Every check is cheap (a small file write, a statvfs, an indexed SQLite count), so a probe
answers fast.

Destinations are not readiness: one that is down must not take the node out of service (the
durable spool and the send retries exist for exactly that). :class:`DestinationProber` probes
them in the background every ``PROBE_INTERVAL_S`` seconds (C-ECHO with ``ops.echo_timeout_s``
for DICOM peers, a QIDO-RS search for DICOMweb archives, a writable check for folders) and keeps the last result with its time; the
``/readyz`` JSON body reports it under ``destinations`` and the gauge
``ct2mri_destination_up{destination}`` is 1 or 0. Both bodies say which check failed and why, so
an orchestrator's probe log tells the operator what to fix.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..config import AnyDestination, FolderDestination, NodeConfig
from ..deliver.dispatch import echo
from ..errors import ConfigError, Ct2MriError
from ..fsutil import write_temporary
from ..jobs.store import JobStore
from .metrics import CONTENT_TYPE, NodeMetrics
from .web import StatusPages

log = logging.getLogger(__name__)

#: Seconds between two background probes of the destinations.
PROBE_INTERVAL_S = 30.0
_MB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One check's outcome."""

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


def check_spool(spool_dir: Path) -> Check:
    """The spool's ``incoming/`` (received CT) and ``output/`` (MR series) folders take files."""
    if not spool_dir.is_dir():
        return Check("spool", False, f"spool folder {spool_dir} does not exist")
    for folder in (spool_dir / "incoming", spool_dir / "output"):
        check = check_writable(folder, "spool")
        if not check.ok:
            return check
    return Check("spool", True)


def check_free_space(spool_dir: Path, min_free_mb: float) -> Check:
    """Free space on the spool's file system is at or above the watermark the SCP enforces."""
    try:
        free = shutil.disk_usage(spool_dir).free
    except OSError as exc:
        return Check("free_space", False, f"cannot read free space of {spool_dir}: {exc.strerror or exc}")
    if free < min_free_mb * _MB:
        return Check("free_space", False, f"{free / _MB:.0f} MB free in {spool_dir}, below "
                     f"limits.min_free_disk_mb={min_free_mb:g}; free disk space")
    return Check("free_space", True)


def check_store(store: JobStore) -> Check:
    """The job store answers a cheap indexed query."""
    try:
        store.count("queued")
    except (sqlite3.Error, Ct2MriError, OSError) as exc:
        return Check("job_store", False, f"the job database {store.path} does not answer: {exc}")
    return Check("job_store", True)


def check_destination(dest: AnyDestination, calling_ae: str, timeout_s: float) -> Check:
    """C-ECHO a DICOM destination or QIDO-RS a DICOMweb one (with a short timeout), or test that
    a folder is writable."""
    name = dest.name
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


def readiness(config: NodeConfig, model_loaded: Callable[[], bool] | None,
              store: JobStore | None) -> list[Check]:
    """The intake checks of a node with ``config``; ``model_loaded`` None: this role does not
    translate; ``store`` None: not opened yet (not ready)."""
    checks = []
    if model_loaded is not None:
        loaded = model_loaded()
        checks.append(Check("model", loaded, "" if loaded else "the model is not loaded yet"))
    checks.append(check_spool(config.spool_dir))
    checks.append(check_free_space(config.spool_dir, config.limits.min_free_disk_mb))
    checks.append(check_store(store) if store is not None
                  else Check("job_store", False, "the job store is not open yet"))
    return checks


class DestinationProber:
    """Probes every destination in a background thread and keeps the last result with its time."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.config = config
        self.metrics = metrics
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[Check, float]] = {}     # name -> (check, wall time it ended)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe_once(self) -> None:
        """Probe each destination now, one after the other; update the results and the gauge."""
        for dest in self.config.destinations:
            check = check_destination(dest, self.config.node.ae_title, self.config.ops.echo_timeout_s)
            with self._lock:
                self._last[dest.name] = (check, time.time())
            self.metrics.destination_up.labels(dest.name).set(1 if check.ok else 0)
            if not check.ok:
                log.warning("destination %s is down: %s", dest.name, check.detail)

    def results(self) -> dict[str, dict[str, Any]]:
        """Each destination's last result: ``up`` (None before the first probe), ``detail``,
        ``checked_at`` (Unix time) and ``age_s``."""
        now = time.time()
        with self._lock:
            last = dict(self._last)
        out: dict[str, dict[str, Any]] = {}
        for dest in self.config.destinations:
            if dest.name not in last:
                out[dest.name] = {"up": None, "detail": "not probed yet", "checked_at": None, "age_s": None}
                continue
            check, at = last[dest.name]
            out[dest.name] = {"up": check.ok, "detail": check.detail, "checked_at": round(at, 3),
                              "age_s": round(now - at, 3)}
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe_once()
            except Exception:  # noqa: BLE001 (a probe error must not end the prober)
                log.exception("destination probe failed")
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Probe now and then every ``interval_s`` in a daemon thread (nothing to do without destinations)."""
        if not self.config.destinations:
            return
        self._thread = threading.Thread(target=self._run, name="ct2mri-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop probing (waits for a probe in progress at most a few seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.ops.echo_timeout_s + 5)


class _Handler(BaseHTTPRequestHandler):
    server: _OpsHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.exposition(), CONTENT_TYPE)
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            checks = readiness(self.server.config, self.server.model_loaded, self.server.store)
            ready = all(c.ok for c in checks)
            body = {"status": "ready" if ready else "not ready",
                    "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
                    "destinations": self.server.prober.results()}
            self._json(200 if ready else 503, body)
        elif not self._status_page("GET"):
            self._json(404, {"error": f"no such endpoint {path}; try /, /metrics, /healthz or /readyz"})

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._status_page("POST"):
            self._json(404, {"error": f"no such endpoint {self.path.split('?', 1)[0]} for POST"})

    def _status_page(self, method: str) -> bool:
        """Serve a status page route (ops/web.py); False when ``self.path`` is not one."""
        if method == "GET":
            response = self.server.web.get(self.path, self.headers)
        else:
            length = min(int(self.headers.get("Content-Length") or 0), 64 * 1024)
            response = self.server.web.post(self.path, self.headers, self.rfile.read(length))
        if response is None:
            return False
        self.send_response(response.code)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                         "form-action 'self'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(response.body)
        return True

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
                 model_loaded: Callable[[], bool] | None, store: JobStore | None,
                 prober: DestinationProber) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.metrics = metrics
        self.model_loaded = model_loaded
        self.store = store
        self.prober = prober
        self.web = StatusPages(config, store)


class HealthServer:
    """Serves /metrics, /healthz and /readyz on ``ops.http_bind_address:ops.http_port`` and runs
    the destination prober.

    ``model_loaded`` is None for a role that does not translate (no model check); ``store`` is
    the process's job store (checked with a cheap query).
    """

    def __init__(self, config: NodeConfig, metrics: NodeMetrics, model_loaded: Callable[[], bool] | None,
                 store: JobStore | None = None, probe_interval_s: float = PROBE_INTERVAL_S) -> None:
        port = config.ops.http_port
        address = (config.ops.http_bind_address, 0 if port is None else port)
        self.prober = DestinationProber(config, metrics, probe_interval_s)
        try:
            self._server = _OpsHTTPServer(address, config, metrics, model_loaded, store, self.prober)
        except OSError as exc:   # the embedded default's fixed port may be taken (another node)
            raise ConfigError(
                f"ops.http_port: cannot serve the status page on {address[0]}:{address[1]}: "
                f"{exc.strerror or exc}; is another node or worker running on this machine? "
                "set ops.http_port to another port, 0 (any free port) or null (off)"
            ) from exc
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (``ops.http_port: 0`` picks a free one)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="ct2mri-http", daemon=True)
        self._thread.start()
        self.prober.start()
        log.info("operations endpoint on http://%s:%d (status page /, /metrics /healthz /readyz)",
                 self._server.server_address[0], self.port)

    def stop(self) -> None:
        """Stop probing and serving; close the socket."""
        self.prober.stop()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
