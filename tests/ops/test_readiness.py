"""/readyz means intake: a destination that is down is reported, never a 503; an unwritable
spool, a spool disk below the watermark, a model not loaded or a job store that is away is a
503 naming the check, and ready again once fixed.

Real node, real HTTP, real C-ECHO associations (to a port where nothing listens), a real
C-STORE while the destination is down, a real model load (held back until the test lets it go)
and a real PostgreSQL job store that the test stops and starts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodekit import free_port, http_get, make_ct_series, node_config, samples, send, wait_for

from ct2mri_node import node as node_module
from ct2mri_node.model.translator import Translator
from ct2mri_node.node import Node


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    code, body = http_get(port, "/readyz")
    return code, json.loads(body)


@pytest.fixture
def start_node(tmp_path: Path, translator: Translator) -> Iterator[Any]:
    """Start a node with ``ops.http_port: 0`` and the given config overrides; stopped afterwards."""
    nodes: list[Node] = []

    def start(**overrides: Any) -> Node:
        ops = {"http_port": 0, "echo_timeout_s": 1, **overrides.pop("ops", {})}
        node = Node(node_config(tmp_path, ops=ops, **overrides), translator=translator)
        nodes.append(node)
        node.start()
        return node

    yield start
    for node in nodes:
        node.stop()


def test_destination_down_is_reported_not_a_503(start_node: Any, tmp_path: Path) -> None:
    dead = free_port()      # nothing listens here: every C-ECHO is refused
    node = start_node(destinations=[
        {"name": "archive", "type": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": dead,
         "timeout_s": 2},
        {"name": "local", "type": "folder", "path": "outbox"},
    ])
    port = node.health.port
    report = wait_for(lambda: (r := _readyz(port)[1])["destinations"]["archive"]["up"] is not None and r, 30.0)
    code, report = _readyz(port)
    assert code == 200, report
    assert report["status"] == "ready"
    assert set(report["checks"]) == {"model", "spool", "free_space", "job_store"}
    assert all(c["ok"] for c in report["checks"].values()), report
    archive = report["destinations"]["archive"]
    assert archive["up"] is False and archive["detail"] and archive["checked_at"] > 0
    assert report["destinations"]["local"]["up"] is True
    m = samples(http_get(port, "/metrics")[1].decode())
    assert m[("ct2mri_destination_up", (("destination", "archive"),))] == 0
    assert m[("ct2mri_destination_up", (("destination", "local"),))] == 1
    send(node.port, make_ct_series(tmp_path / "ct", seed=5))    # intake goes on: every C-STORE succeeds
    m = samples(http_get(port, "/metrics")[1].decode())
    assert m[("ct2mri_instances_received_total", (("outcome", "stored"),))] == 12


def test_unwritable_spool_is_a_503_naming_the_check(start_node: Any) -> None:
    node = start_node()
    port = node.health.port
    assert _readyz(port)[0] == 200
    incoming = node.spool.incoming
    moved = incoming.with_name("incoming.moved")
    incoming.rename(moved)                      # a file where the folder must be: no file can be
    incoming.write_bytes(b"not a folder")       # created in it, whoever we are (root included)
    try:
        code, report = _readyz(port)
        assert code == 503, report
        assert report["status"] == "not ready"
        assert report["checks"]["spool"]["ok"] is False
        assert "incoming" in report["checks"]["spool"]["detail"]
        assert report["checks"]["model"]["ok"] and report["checks"]["job_store"]["ok"]
    finally:
        incoming.unlink()
        moved.rename(incoming)
    assert _readyz(port)[0] == 200              # fixed: ready again, no restart needed


def test_spool_disk_below_the_watermark_is_a_503(start_node: Any) -> None:
    node = start_node(limits={"min_free_disk_mb": 1e12})     # an exabyte: no test disk has it
    code, report = _readyz(node.health.port)
    assert code == 503, report
    assert report["checks"]["free_space"]["ok"] is False
    assert "min_free_disk_mb" in report["checks"]["free_space"]["detail"]
    assert report["checks"]["spool"]["ok"] is True


def _failing(report: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in report["checks"].items() if not check["ok"])


def test_model_not_loaded_is_a_503_naming_the_check(tmp_path: Path, tiny_checkpoint: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The node serves /readyz before its model is loaded: 503 on ``model`` alone until it is."""
    release = threading.Event()
    real_load = node_module.load_translator

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)                        # a model that takes a while to load
        return real_load(*args, **kwargs)

    monkeypatch.setattr(node_module, "load_translator", slow_load)
    node = Node(node_config(tmp_path, ops={"http_port": 0},
                            model={"checkpoint": str(tiny_checkpoint), "device": "cpu", "steps": 2}))
    starting = threading.Thread(target=node.start, daemon=True)
    starting.start()
    try:
        wait_for(lambda: node.health is not None and node.health.port, 30)
        assert node.health is not None
        code, report = wait_for(lambda: (r := _readyz(node.health.port))[1] and r, 30)   # type: ignore[union-attr]
        assert code == 503, report
        assert report["status"] == "not ready"
        assert _failing(report) == ["model"], report
        assert "model" in report["checks"]["model"]["detail"]
        release.set()
        starting.join(timeout=60)
        assert not starting.is_alive()
        code, report = _readyz(node.health.port)
        assert code == 200 and _failing(report) == [], report
    finally:
        release.set()
        starting.join(timeout=60)
        node.stop()


@pytest.fixture
def _postgres() -> Iterator[Any]:
    """A PostgreSQL server of this test's own, which it stops (tests/scale/scalekit.py starts it)."""
    from scalekit import require_postgres, start_postgres

    require_postgres()
    server = start_postgres()
    yield server
    server.remove()


def test_job_store_away_is_a_503_naming_the_check(start_node: Any, _postgres: Any) -> None:
    url = _postgres.database()
    node = start_node(job_store={"url": url, "connect_timeout_s": 1})
    port = node.health.port
    code, report = _readyz(port)
    assert code == 200 and _failing(report) == [], report
    _postgres.stop()                            # the database server goes away
    try:
        code, report = _readyz(port)
        assert code == 503, report
        assert _failing(report) == ["job_store"], report
        detail = report["checks"]["job_store"]["detail"]
        assert "does not answer" in detail and f"127.0.0.1:{_postgres.port}" in detail
    finally:
        _postgres.start()
    code, report = _readyz(port)
    assert code == 200 and _failing(report) == [], report   # back: ready again, no restart needed
