"""The embedded default config shows a newcomer the status page (issue 21, part 4).

A node started on ``config/ct2mri-node.yaml`` serves the status page on loopback at the fixed,
documented port that README's quick start gives, and a taken port stops the process with an
error that names ``ops.http_port`` (not the DICOM port).

Nodes here never take the fixed ports 11112 and 9110 (other tests and nodes run beside them):
the default's ports are swapped for free ones, everything else is the default as shipped.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml
from nodekit import CLI, free_port, http_get, write_config_file

from ct2mri_node.commands.check_config import summary
from ct2mri_node.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from ct2mri_node.node import Node

ROOT = Path(__file__).resolve().parents[2]
STATUS_PORT = 9110   # documented in README's quick start and in the default config


def _default_data() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_embedded_default_turns_the_status_page_on_at_the_documented_loopback_address() -> None:
    ops = _default_data().get("ops") or {}
    assert ops.get("http_port") == STATUS_PORT and ops.get("http_bind_address") == "127.0.0.1", ops
    address = f"http://127.0.0.1:{STATUS_PORT}/"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme[readme.index("## Quick start"):readme.index("\n## ", readme.index("## Quick start") + 1)]
    assert address in quick, f"README's quick start does not give the status page's address {address}"


def test_check_config_says_where_the_status_page_is(tmp_path: Path) -> None:
    default = summary(load_config(DEFAULT_CONFIG_PATH))
    assert f"status page: http://127.0.0.1:{STATUS_PORT}/ (also /metrics, /healthz, /readyz)" in default
    assert "status page: off (ops.http_port unset)" in summary(load_config(write_config_file(tmp_path)))


def test_node_on_the_embedded_default_serves_the_status_page_on_loopback(tmp_path: Path) -> None:
    data = _default_data()
    data["node"]["port"] = 0
    data["ops"]["http_port"] = free_port()
    data["spool_dir"] = str(tmp_path / "spool")
    data["destinations"] = [{**d, "path": str(tmp_path / "outbox")} if d.get("type") == "folder" else d
                            for d in data["destinations"]]
    data["model"]["device"] = "cpu"
    config = parse_config(data, DEFAULT_CONFIG_PATH.parent, "the embedded default, ports swapped")
    node = Node(config)
    node.start()
    try:
        assert node.health is not None, "the embedded default starts no status page"
        assert node.health._server.server_address[0] == "127.0.0.1"
        code, body = http_get(node.health.port, "/")
        assert code == 200 and b"<html" in body.lower(), body[:200]
        assert http_get(node.health.port, "/healthz")[0] == 200
    finally:
        node.stop()


def test_a_taken_status_port_stops_serve_with_an_error_naming_ops_http_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config_file(
            tmp_path, node={"ae_title": "CT2MRI", "port": free_port(), "bind_address": "127.0.0.1"},
            ops={"http_port": port, "http_bind_address": "127.0.0.1"})
        done = subprocess.run([*CLI, "serve", "--config", str(config)], capture_output=True, text=True,
                              timeout=180, check=False)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "ops.http_port" in done.stderr and f"127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    assert "node.port" not in done.stderr and not re.search(r"Traceback", done.stderr), done.stderr[-2000:]
