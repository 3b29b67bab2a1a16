"""Helpers for the node tests: free ports, small CT series, a capture SCP, configs."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from ct2mri_node.config import NodeConfig, parse_config
from ct2mri_node.training.ct_dicom import write_ct_series


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_ct_series(out_dir: Path, seed: int = 0, slices: int = 12, size: int = 32, **kwargs: Any) -> list[Path]:
    """A small CT phantom series (a water cylinder with a bone ring) written as DICOM files."""
    z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    r = np.hypot(y - size / 2, x - size / 2)
    hu = np.where(r < size * 0.4, 40.0, -1000.0)
    hu = np.where((r >= size * 0.32) & (r < size * 0.4), 900.0, hu).astype(np.float32)
    hu += (z % 3) * 5.0
    return write_ct_series(hu, (3.0, 2.0, 2.0), out_dir, seed=seed, **kwargs)


class CaptureSCP:
    """A pynetdicom storage SCP that keeps every received dataset (the test's archive)."""

    def __init__(self, ae_title: str = "ARCHIVE", status: int = 0x0000) -> None:
        self.ae_title = ae_title
        self.status = status
        self.datasets: list[pydicom.Dataset] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.datasets.append(ds)
        return self.status

    def start(self) -> CaptureSCP:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
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
    data: dict[str, Any] = {
        "node": {"ae_title": "CT2MRI", "port": 0, "bind_address": "127.0.0.1"},
        "calling_aes": [],
        "destinations": [],
        "spool_dir": "spool",
        "series": {"quiet_period_s": 0.5, "min_slices": 8},
        "model": {"checkpoint": "bundled", "device": "cpu", "steps": 2},
        "worker": {"max_attempts": 5, "backoff_initial_s": 0.3, "backoff_max_s": 1.0, "poll_interval_s": 0.1},
    }
    for key, value in overrides.items():
        data[key] = value
    return parse_config(data, tmp_path, "test")
