"""Helpers for the node tests (and the reliability, operations and scale-out tests): free
ports, small CT series, a capture SCP, configs, a C-STORE sender, polling, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from ct2mri_node.config import NodeConfig, parse_config
from ct2mri_node.jobs.store import Job
from ct2mri_node.node import Node
from ct2mri_node.training.ct_dicom import write_ct_series

#: ``ct2mri-node`` as a subprocess, with this interpreter.
CLI = [sys.executable, "-m", "ct2mri_node"]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_ct_series(out_dir: Path, seed: int = 0, slices: int = 12, size: int = 32, taper: float = 0.0,
                   **kwargs: Any) -> list[Path]:
    """A small CT phantom series (a water cylinder with a bone ring) written as DICOM files.

    ``taper``: the fraction by which the body's radius shrinks from the first slice to the last
    (a cone, so that each slice has its own air; 0: a cylinder)."""
    z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    r = np.hypot(y - size / 2, x - size / 2) / (1.0 - taper * z / max(slices - 1, 1))
    hu = np.where(r < size * 0.4, 40.0, -1000.0)
    hu = np.where((r >= size * 0.32) & (r < size * 0.4), 900.0, hu).astype(np.float32)
    hu += (z % 3) * 5.0
    return write_ct_series(hu, (3.0, 2.0, 2.0), out_dir, seed=seed, **kwargs)


class CaptureSCP:
    """A pynetdicom storage SCP that keeps every received dataset (the test's archive)."""

    def __init__(self, ae_title: str = "ARCHIVE", status: int = 0x0000,
                 syntaxes: tuple[str, ...] = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"),
                 companions: bool = True) -> None:
        self.ae_title = ae_title
        self.status = status
        self.syntaxes = syntaxes                  # transfer syntaxes accepted for MR storage
        self.companions = companions              # also accept Parametric Map and Secondary Capture
        self.datasets: list[pydicom.Dataset] = []
        self.received_syntaxes: list[str] = []    # the accepted context's syntax, per C-STORE
        self.lock = threading.Lock()
        self.port = free_port()
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.datasets.append(ds)
            self.received_syntaxes.append(str(event.context.transfer_syntax))
        return self.status

    def start(self) -> CaptureSCP:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(MRImageStorage, list(self.syntaxes))
        if self.companions:
            ae.add_supported_context(ParametricMapStorage, list(self.syntaxes))
            ae.add_supported_context(SecondaryCaptureImageStorage, list(self.syntaxes))
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda e: 0x0000)],
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def destination(self, name: str = "archive") -> dict[str, Any]:
        return {"name": name, "type": "dicom", "ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, "timeout_s": 10}


def node_config(tmp_path: Path, **overrides: Any) -> NodeConfig:
    """A test config: loopback, port 0, fast completion and backoff, tiny model steps."""
    return parse_config(node_config_data(**overrides), tmp_path, "test")


def node_config_data(**overrides: Any) -> dict[str, Any]:
    """The YAML data of :func:`node_config` (to write a config file for the CLI)."""
    data: dict[str, Any] = {
        "node": {"ae_title": "CT2MRI", "port": 0, "bind_address": "127.0.0.1"},
        "calling_aes": [],
        "destinations": [],
        "spool_dir": "spool",
        "series": {"quiet_period_s": 0.5, "min_slices": 8, "restart_hold_s": 0},
        "model": {"checkpoint": "bundled", "device": "cpu", "steps": 2},
        "worker": {"max_attempts": 5, "backoff_initial_s": 0.3, "backoff_max_s": 1.0, "poll_interval_s": 0.1},
    }
    data.update(overrides)
    return data


def write_config_file(tmp_path: Path, **overrides: Any) -> Path:
    """:func:`node_config_data` with ``overrides`` as ``tmp_path/node.yaml`` (for the CLI and serve).

    Overrides replace whole top-level keys; ``{}`` for a section means the schema's defaults.
    """
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(node_config_data(**overrides)), encoding="utf-8")
    return path


def scu(calling: str = "PACS", syntax: str = ExplicitVRLittleEndian) -> AE:
    """A CT storage SCU (one transfer syntax) that also echoes."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, [syntax])
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def store(port: int, items: Sequence[Any], calling: str = "PACS", called: str = "CT2MRI",
          syntax: str = ExplicitVRLittleEndian, **kw: Any) -> list[int]:
    """C-STORE ``items`` (paths or datasets) on one association; the statuses (-1: no response)."""
    assoc = scu(calling, syntax).associate("127.0.0.1", port, ae_title=called, **kw)
    if not assoc.is_established:
        raise ConnectionError("association not established")
    statuses: list[int] = []
    try:
        for item in items:
            statuses.append(int(getattr(assoc.send_c_store(item), "Status", -1)))
            if statuses[-1] == -1 or not assoc.is_established:   # aborted: stop like a real sender
                break
        return statuses
    finally:
        if assoc.is_established:
            assoc.release()


def send(port: int, paths: list[Path], calling: str = "PACS", syntax: str = ExplicitVRLittleEndian) -> None:
    """C-STORE ``paths`` to the node over one association; every status must be success."""
    assert store(port, paths, calling, syntax=syntax) == [0] * len(paths)


def wait_for(predicate: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy (that value); AssertionError after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting")


def status_json(config: Path) -> list[dict[str, Any]]:
    """``ct2mri-node status --json`` run as a person would run it; it must exit 0."""
    done = subprocess.run([*CLI, "status", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on the node's loopback HTTP server; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as rsp:
            return rsp.status, rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every metric sample as {(name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


class RecordingSink:
    """A completion sink that records the series it is told about (what the job store would get)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.complete: list[str] = []
        self.calling_aes: list[str | None] = []

    def series_received(self, series_uid: str, study_uid: str, calling_ae: str | None = None) -> None:
        self.received.append(series_uid)

    def series_complete(self, series_uid: str, study_uid: str, last_instance_at: float,
                        calling_ae: str | None = None) -> None:
        self.complete.append(series_uid)
        self.calling_aes.append(calling_ae)


def jobs_in(node: Node, *states: str) -> list[Job]:
    """The node's jobs when every one is in ``states``, else an empty list."""
    assert node.store is not None
    jobs = node.store.list()
    return jobs if jobs and all(j.state in states for j in jobs) else []


@contextmanager
def started_nodes(translator: Any) -> Iterator[Callable[[NodeConfig], Node]]:
    """A function that starts in-process nodes with ``translator``; all are stopped on exit."""
    nodes: list[Node] = []

    def start(config: NodeConfig) -> Node:
        node = Node(config, translator=translator)
        node.start()
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


# -- peers that cannot bind to loopback only (Orthanc, dcmtk's storescp) ----------------------
def private_network_problem(*programs: str) -> str | None:
    """None when ``programs`` are installed and a private network namespace with only loopback
    can be made (``unshare -n``, root as in CI), else why not (for ``require_peer``)."""
    for program in programs:
        if shutil.which(program) is None:
            return f"{program} is not installed (deploy/install.sh installs it)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        return f"cannot create a private network namespace (needs root): {probe.stderr.strip()}"
    return None


def run_in_private_network(script: Path, *args: str, timeout_s: float = 300) -> Any:
    """``python script args`` inside a new network namespace with only loopback up: peers that
    listen on every interface (Orthanc, storescp) are reachable only from inside. The script
    prints its report as JSON on its last line; returns that report (AssertionError on failure)."""
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, str(script), *args]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
                         env={**os.environ, "TCP_NODELAY": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    report["stderr"] = run.stderr
    return report
