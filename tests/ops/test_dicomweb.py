"""DICOMweb destinations against a real local HTTP server (``http.server`` in a thread) that
answers STOW-RS as scripted: 503 then 200, 429 with Retry-After, 400, a FailedSOPSequence.

Checks the transient/permanent classification, that each instance is stored exactly once over
retries, that credentials are sent but never appear in reasons or logs, the QIDO-RS echo and
readiness probe, and a node whose worker delivers to such an archive (retry, metrics).
The real archive (Orthanc's DICOMweb plugin) is tests/ops/test_orthanc_dicomweb.py.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from nodekit import (
    CLI,
    http_get,
    make_ct_series,
    node_config,
    samples,
    send,
    wait_for,
    write_config_file,
)

from ct2mri_node.config import DicomWebDestination, NodeConfig, parse_config
from ct2mri_node.deliver.dicomweb import DicomWebBusy
from ct2mri_node.deliver.dispatch import echo, send_series
from ct2mri_node.errors import ConfigError, SendError
from ct2mri_node.node import Node
from ct2mri_node.ops.health import check_destination

SECRET = "tok-3f9a-not-for-logs"


@dataclass
class Answer:
    """One scripted STOW-RS answer: status, headers, and which instances fail with which reason."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None          # a fixed body; None: the DICOM JSON store result
    fail: dict[str, int] = field(default_factory=dict)   # SOP instance UID -> failure reason


class Archive:
    """A DICOMweb archive stand-in: STOW-RS at /studies, QIDO-RS at /studies (GET)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []        # STOW-RS answers, in order (then 200)
        self.qido: list[Answer] = []          # QIDO-RS error answers, in order (then 200 [])
        self.stored: list[str] = []          # SOP instance UIDs, once per accepted instance
        self.posts: list[list[str]] = []     # instances in each STOW-RS request
        self.received: list[pydicom.Dataset] = []   # every instance posted, as received
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                archive.auth.append(self.headers.get("Authorization"))
                if archive.qido:
                    answer = archive.qido.pop(0)
                    self._reply(answer.status, answer.body or b"no", "text/plain", answer.headers)
                else:
                    self._reply(200, b"[]", "application/dicom+json", {})

            def do_POST(self) -> None:
                archive.auth.append(self.headers.get("Authorization"))
                body = self._body()
                uids, classes = archive.parse(self.headers["Content-Type"], body, archive.received)
                with archive.lock:
                    archive.posts.append(uids)
                    answer = archive.script.pop(0) if archive.script else Answer()
                    stored = [u for u in uids if u not in answer.fail] if answer.status < 300 or answer.fail else []
                    archive.stored += stored
                if answer.body is not None:
                    self._reply(answer.status, answer.body, "text/plain", answer.headers)
                    return
                result = pydicom.Dataset()
                if stored:
                    result.ReferencedSOPSequence = [_item(classes[u], u) for u in stored]
                if answer.fail:
                    result.FailedSOPSequence = [_item(classes[u], u, answer.fail[u]) for u in uids if u in answer.fail]
                self._reply(answer.status, json.dumps(result.to_json_dict()).encode(), "application/dicom+json",
                            answer.headers)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, code: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    @staticmethod
    def parse(content_type: str, body: bytes,
              received: list[pydicom.Dataset] | None = None) -> tuple[list[str], dict[str, str]]:
        """SOP instance UIDs (and their classes) of a multipart/related application/dicom body;
        each instance is appended to ``received`` when given."""
        boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
        uids, classes = [], {}
        for part in body.split(b"--" + boundary)[1:]:
            if part.startswith(b"--"):
                break
            payload = part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
            ds = pydicom.dcmread(io.BytesIO(payload))
            uids.append(str(ds.SOPInstanceUID))
            if received is not None:
                received.append(ds)
            classes[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
        return uids, classes

    def destination(self, name: str = "cloud", **extra: Any) -> dict[str, Any]:
        return {"name": name, "type": "dicomweb", "url": self.url, "timeout_s": 10, **extra}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _item(sop_class: str, uid: str, reason: int | None = None) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    if reason is not None:
        item.FailureReason = reason
    return item


@pytest.fixture
def archive() -> Iterator[Archive]:
    server = Archive()
    yield server
    server.stop()


def _dest(tmp_path: Path, data: dict[str, Any]) -> DicomWebDestination:
    config = parse_config({"destinations": [data]}, tmp_path, "test")
    (dest,) = config.destinations
    assert isinstance(dest, DicomWebDestination)
    return dest


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    """A job's output folder (``output/7/``) with an 8-instance series."""
    return make_ct_series(tmp_path / "output" / "7", seed=4, slices=8)


def _uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def test_503_then_200_is_transient_and_stores_each_instance_once(
        tmp_path: Path, archive: Archive, series: list[Path]) -> None:
    dest = _dest(tmp_path, archive.destination())
    archive.script = [Answer(503)]
    with pytest.raises(SendError) as first:
        send_series(dest, series, "CT2MRI")
    assert not first.value.permanent and "HTTP 503" in str(first.value)
    assert archive.stored == []
    report = send_series(dest, series, "CT2MRI")
    assert report.instances == len(series)
    assert sorted(archive.stored) == sorted(_uids(series))
    report = send_series(dest, series, "CT2MRI")            # already stored: nothing posted again
    assert len(archive.posts) == 2 and sorted(archive.stored) == sorted(_uids(series))


def test_coercion_changes_what_the_archive_receives_not_the_files(
        tmp_path: Path, archive: Archive, series: list[Path]) -> None:
    """``coerce`` applies to what STOW-RS posts (issue 21); the job's files stay as written."""
    written = {p: p.read_bytes() for p in series}
    dest = _dest(tmp_path, archive.destination(coerce={"InstitutionName": None, "ImageComments": "coerced",
                                                       "SliceThickness": 2.5}))
    assert send_series(dest, series, "CT2MRI").instances == len(series)
    assert {p: p.read_bytes() for p in series} == written
    originals = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, series)}
    assert len(archive.received) == len(series) and all("InstitutionName" in o for o in originals.values())
    for sent in archive.received:
        original = originals[str(sent.SOPInstanceUID)]
        assert "InstitutionName" not in sent and sent.ImageComments == "coerced" and sent.SliceThickness == 2.5
        assert sent.PixelData == original.PixelData and sent.SeriesInstanceUID == original.SeriesInstanceUID


def test_429_with_retry_after_is_transient_with_the_delay(tmp_path: Path, archive: Archive, series: list[Path]) -> None:
    dest = _dest(tmp_path, archive.destination())
    archive.script = [Answer(429, {"Retry-After": "7"}, b"slow down")]
    with pytest.raises(DicomWebBusy) as busy:
        send_series(dest, series, "CT2MRI")
    assert not busy.value.permanent and busy.value.retry_after_s == 7.0
    assert "retry after 7 s" in str(busy.value)
    send_series(dest, series, "CT2MRI")
    assert sorted(archive.stored) == sorted(_uids(series))


def test_400_is_permanent_with_the_reason(tmp_path: Path, archive: Archive, series: list[Path]) -> None:
    dest = _dest(tmp_path, archive.destination())
    archive.script = [Answer(400, body=b"Study Instance UID mismatch")]
    with pytest.raises(SendError) as bad:
        send_series(dest, series, "CT2MRI")
    assert bad.value.permanent and "HTTP 400" in str(bad.value) and "Study Instance UID mismatch" in str(bad.value)
    assert archive.stored == []


def test_failed_sop_sequence_per_instance(tmp_path: Path, archive: Archive, series: list[Path]) -> None:
    dest = _dest(tmp_path, archive.destination())
    uids = _uids(series)
    # out of resources for one instance (transient): only that one goes again, once
    archive.script = [Answer(202, fail={uids[2]: 0xA700})]
    with pytest.raises(SendError) as partial:
        send_series(dest, series, "CT2MRI")
    assert not partial.value.permanent and "0xA700" in str(partial.value) and "7 stored" in str(partial.value)
    send_series(dest, series, "CT2MRI")
    assert archive.posts[1] == [uids[2]]
    assert sorted(archive.stored) == sorted(uids)
    # a data set the archive refuses (0xA900, in a 409) is permanent, with the others stored
    other = make_ct_series(tmp_path / "output" / "8", seed=5, slices=8)
    other_uids = _uids(other)
    archive.script = [Answer(409, fail={other_uids[0]: 0xA900})]
    with pytest.raises(SendError) as refused:
        send_series(dest, other, "CT2MRI")
    assert refused.value.permanent and "0xA900" in str(refused.value)
    assert sorted(archive.stored) == sorted(uids + other_uids[1:])
    assert json.loads((tmp_path / "output" / "8.dicomweb-cloud.json").read_text()) == sorted(other_uids[1:])


def test_connection_refused_is_transient(tmp_path: Path, series: list[Path]) -> None:
    dest = _dest(tmp_path, {"name": "down", "type": "dicomweb", "url": "http://127.0.0.1:9/dicom-web", "timeout_s": 2})
    with pytest.raises(SendError) as down:
        send_series(dest, series, "CT2MRI")
    assert not down.value.permanent and "cannot connect" in str(down.value)


def test_credentials_are_sent_never_logged(
        tmp_path: Path, archive: Archive, series: list[Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CLOUD_TOKEN", SECRET)
    dest = _dest(tmp_path, archive.destination(auth={"type": "bearer", "token_env": "CLOUD_TOKEN"}))
    archive.script = [Answer(401, body=b"who are you")]
    with pytest.raises(SendError) as denied:
        send_series(dest, series, "CT2MRI")
    assert denied.value.permanent and "check auth" in str(denied.value)
    send_series(dest, series, "CT2MRI")
    assert archive.auth == [f"Bearer {SECRET}"] * 2
    (tmp_path / "pw").write_text(SECRET + "\n")
    basic = _dest(tmp_path, archive.destination(auth={"type": "basic", "username": "node", "password_file": "pw"}))
    echo(basic, "CT2MRI")
    assert archive.auth[-1] is not None and archive.auth[-1].startswith("Basic ")
    assert SECRET not in caplog.text and SECRET not in str(denied.value)
    missing = _dest(tmp_path, archive.destination(auth={"type": "bearer", "token_env": "NOT_SET_ANYWHERE"}))
    with pytest.raises(SendError, match="NOT_SET_ANYWHERE.*empty or missing") as unset:
        echo(missing, "CT2MRI")
    assert unset.value.permanent


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.url: .*not an http"):
        parse_config({"destinations": [{"name": "c", "type": "dicomweb", "url": "dicomweb.example"}]}, tmp_path)
    with pytest.raises(ConfigError, match="credentials in auth"):
        parse_config({"destinations": [{"name": "c", "type": "dicomweb", "url": "https://u:p@x.example/dw"}]}, tmp_path)
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.auth: basic auth needs exactly one"):
        parse_config({"destinations": [{"name": "c", "type": "dicomweb", "url": "https://x.example/dw",
                                        "auth": {"type": "basic", "username": "u"}}]}, tmp_path)


def test_echo_command_and_readiness_probe(tmp_path: Path, archive: Archive) -> None:
    config = write_config_file(tmp_path, destinations=[archive.destination()])
    done = subprocess.run([*CLI, "echo", "cloud", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("QIDO-RS cloud (")
    dest = _dest(tmp_path, archive.destination())
    assert check_destination(dest, "CT2MRI", 2).ok
    archive.qido = [Answer(503, body=b"maintenance")]
    down = check_destination(dest, "CT2MRI", 2)
    assert not down.ok and "HTTP 503" in down.detail and "maintenance" in down.detail


def test_node_retries_dicomweb_and_counts_sends(
        tmp_path: Path, archive: Archive, start_node: Callable[[NodeConfig], Node]) -> None:
    archive.script = [Answer(503)]
    config = node_config(tmp_path, destinations=[archive.destination()], ops={"http_port": 0})
    node = start_node(config)
    ct = make_ct_series(tmp_path / "ct", seed=9, slices=8)
    send(node.port, ct)
    assert node.store is not None and node.health is not None
    (job,) = wait_for(lambda: [j for j in node.store.list() if j.state in ("done", "failed")], timeout_s=120)
    assert job.state == "done", job.reason
    (delivery,) = job.deliveries
    assert (delivery.destination, delivery.state, delivery.attempts) == ("cloud", "done", 2)
    assert len(archive.stored) == len(set(archive.stored)) == len(ct)
    m = samples(http_get(node.health.port, "/metrics")[1].decode())
    assert m[("ct2mri_sends_total", (("destination", "cloud"), ("status", "done")))] == 1


def test_worker_waits_as_long_as_retry_after_says(
        tmp_path: Path, archive: Archive, start_node: Callable[[NodeConfig], Node]) -> None:
    """A 429 with Retry-After 30 defers the job at least 30 s, though the backoff would retry in 0.3 s."""
    archive.script = [Answer(429, {"Retry-After": "30"})]
    config = node_config(tmp_path, destinations=[archive.destination()])
    node = start_node(config)
    send(node.port, make_ct_series(tmp_path / "ct", seed=10, slices=8))
    assert node.store is not None
    (job,) = wait_for(lambda: [j for j in node.store.list() if j.attempts >= 1 and j.state == "queued"
                               and j.reason], timeout_s=120)
    assert job.not_before - time.time() >= 25.0, (job.not_before - time.time(), job.reason)
    assert "429" in (job.reason or "")
    assert archive.stored == []
