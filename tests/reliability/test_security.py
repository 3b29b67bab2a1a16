"""Security over real associations: allow-list and called AE, DICOM TLS both ways, no PHI in
logs at INFO, and UIDs crafted as paths never become file names."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from nodekit import make_ct_series, node_config, scu, store, wait_for
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from relkit import make_pki, raw_sending, write_raw

from ct2mri_node.config import ClientTls, NodeConfig, ServerTls
from ct2mri_node.node import Node
from ct2mri_node.security import client_context, server_context

CANNOT_UNDERSTAND = 0xC210


def test_allow_list_host_and_called_ae(start_node: Callable[[NodeConfig], Node], tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    config = node_config(tmp_path, calling_aes=[{"ae_title": "PACS", "host": "127.0.0.1"},
                                                {"ae_title": "CTSCAN", "host": "192.0.2.7"}])
    node = start_node(config)
    caplog.set_level(logging.WARNING)
    # allowed; unknown AE; known AE from the wrong host; wrong called AE; called AE in the wrong case
    for calling, called in (("PACS", "CT2MRI"), ("INTRUDER", "CT2MRI"), ("CTSCAN", "CT2MRI"),
                            ("PACS", "OTHER"), ("PACS", "ct2mri")):
        assoc = scu(calling).associate("127.0.0.1", node.port, ae_title=called)
        if (calling, called) == ("PACS", "CT2MRI"):
            assert assoc.is_established
            assoc.release()
        else:
            assert assoc.is_rejected, (calling, called)
    assert "calling AE 'CTSCAN' at 127.0.0.1: not in calling_aes" in caplog.text
    assert node.spool.series_uids() == []


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path / "pki")


class TlsArchive:
    """A storage SCP that speaks DICOM TLS only and requires our client certificate."""

    def __init__(self, pki: dict[str, Path]) -> None:
        self.received: list[str] = []
        ae = AE(ae_title="TLSARCH")
        ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        context = server_context(ServerTls(cert=pki["server"], key=pki["server_key"], ca=pki["ca"]))
        self.server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=context,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0


@pytest.fixture
def tls_archive(pki: dict[str, Path]) -> Iterator[TlsArchive]:
    archive = TlsArchive(pki)
    yield archive
    archive.server.shutdown()


def test_tls_in_and_out(start_node: Callable[[NodeConfig], Node], tmp_path: Path, pki: dict[str, Path],
                        tls_archive: TlsArchive) -> None:
    dest = {"name": "tls", "type": "dicom", "ae_title": "TLSARCH", "host": "127.0.0.1", "port": tls_archive.port,
            "timeout_s": 10, "tls": {"ca": str(pki["ca"]), "cert": str(pki["client"]), "key": str(pki["client_key"])}}
    node_tls = {"cert": str(pki["server"]), "key": str(pki["server_key"]), "ca": str(pki["ca"])}
    node = start_node(node_config(tmp_path, node={"ae_title": "CT2MRI", "port": 0, "bind_address": "127.0.0.1",
                                                  "tls": node_tls}, destinations=[dest]))
    ct = make_ct_series(tmp_path / "ct", slices=8, size=16)
    assert not scu().associate("127.0.0.1", node.port, ae_title="CT2MRI").is_established   # plaintext
    no_cert = client_context(ClientTls(ca=pki["ca"]))
    assert not scu().associate("127.0.0.1", node.port, ae_title="CT2MRI",
                               tls_args=(no_cert, "localhost")).is_established        # no client certificate
    with_cert = client_context(ClientTls(ca=pki["ca"], cert=pki["client"], key=pki["client_key"]))
    assert store(node.port, ct, tls_args=(with_cert, "localhost")) == [0] * 8
    assert node.store is not None
    (job,) = wait_for(lambda: [j for j in node.store.list() if j.state in ("done", "failed")], 60)
    assert job.state == "done", job.reason
    assert len(set(tls_archive.received)) == 8


def test_no_patient_identifiers_in_logs(start_node: Callable[[NodeConfig], Node], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="pynetdicom")
    outbox = tmp_path / "outbox"
    node = start_node(node_config(tmp_path, destinations=[{"name": "local", "type": "folder", "path": str(outbox)}]))
    phi = {"PatientName": "SECRETA^PHINEAS", "PatientID": "PHI-ID-7731", "PatientBirthDate": "19321109"}
    good = make_ct_series(tmp_path / "good", seed=41, slices=8, size=16,
                          patient_name=phi["PatientName"], patient_id=phi["PatientID"])
    gap = make_ct_series(tmp_path / "gap", seed=42, slices=9, size=16,
                         patient_name=phi["PatientName"], patient_id=phi["PatientID"])
    for path in good + gap:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = phi["PatientBirthDate"]
        ds.save_as(path)
    assert store(node.port, good) == [0] * 8
    assert store(node.port, gap[:4] + gap[5:]) == [0] * 8     # refused at completion: a slice missing
    assert node.store is not None
    wait_for(lambda: len([j for j in node.store.list() if j.state in ("done", "failed", "refused")]) == 2, 60)
    text = caplog.text
    assert "slice(s) missing" in text and "job 1 done" in text     # the logs did cover both paths
    for value in (*phi.values(), "SECRETA", "PHINEAS", "7731"):
        assert value not in text, value


def test_uids_crafted_as_paths_are_rejected(start_node: Callable[[NodeConfig], Node], tmp_path: Path) -> None:
    node = start_node(node_config(tmp_path))
    (src,) = make_ct_series(tmp_path / "ct", slices=1, size=16)
    base = pydicom.dcmread(src)
    crafted: list[Path] = []
    bad_values = ["../../x", "1.2/3.4", "/etc/passwd", "1." + "1" * 70, "1.2.abc", "..", "1.2\\3", "1.2\x00.3"]
    for i, bad in enumerate(bad_values):
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            ds = pydicom.dcmread(src)
            with pydicom.config.disable_value_validation():
                setattr(ds, keyword, bad)
            crafted.append(write_raw(tmp_path / f"bad{i}-{keyword}.dcm", ds, base.SOPClassUID, f"1.2.3.{i}"))
    before = {p for p in tmp_path.parent.rglob("*")}
    with raw_sending():
        statuses = store(node.port, crafted)
    assert statuses == [CANNOT_UNDERSTAND] * len(crafted)
    created = {p for p in tmp_path.parent.rglob("*")} - before
    spool = node.config.spool_dir
    assert all(spool in p.parents for p in created), sorted(created)
    assert node.spool.series_uids() == []
    assert not any(p.name in ("x", "passwd") for p in created)
