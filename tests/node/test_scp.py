"""The SCP over real loopback associations: pynetdicom and dcmtk storescu as peers."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from nodekit import CaptureSCP, free_port, make_ct_series, node_config, wait_for
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE, Association
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]
from relkit import raw_sending, write_raw

from ct2mri_node.config import CallingAE, DicomDestination, NodeConfig
from ct2mri_node.deliver.send import _associate
from ct2mri_node.jobs.store import JobStore
from ct2mri_node.receive import completion
from ct2mri_node.receive.completion import CompletionWatcher
from ct2mri_node.receive.scp import StoreSCP
from ct2mri_node.receive.spool import Spool, header_from_dataset


class Sink:
    """Records completion reports and passes them on to a real job store (as the node does)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.complete: list[str] = []

    def series_received(self, series_uid: str, study_uid: str, calling_ae: str | None = None) -> None:
        self.store.series_received(series_uid, study_uid, calling_ae)

    def series_complete(self, series_uid: str, study_uid: str, last_instance_at: float,
                        calling_ae: str | None = None) -> None:
        self.complete.append(series_uid)
        self.store.series_complete(series_uid, study_uid, last_instance_at, calling_ae)


class Receiver:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.spool.create()
        self.sink = Sink(JobStore(self.spool.db_path))
        self.watcher = CompletionWatcher(self.sink, config.series.quiet_period_s)
        self.scp = StoreSCP(config.node, config.calling_aes, self.spool, self.watcher)

    def __enter__(self) -> Receiver:
        self.watcher.start()
        self.scp.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.scp.stop()
        self.watcher.stop()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    config = node_config(tmp_path, calling_aes=[{"ae_title": "PACS"}, {"ae_title": "SCANNER", "host": "10.9.9.9"}])
    with Receiver(config) as rec:
        yield rec


def _scu(calling: str = "PACS") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [RLELossless])   # one context per syntax
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage)
    return ae


def _send(rec: Receiver, paths: list[Path], calling: str = "PACS", called: str = "CT2MRI") -> list[int]:
    assoc = _scu(calling).associate("127.0.0.1", rec.scp.port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def _wait_complete(rec: Receiver, count: int, timeout_s: float = 15.0) -> list[str]:
    """The completed series once there are ``count``; AssertionError after ``timeout_s``."""
    wait_for(lambda: len(rec.sink.complete) >= count, timeout_s)
    return rec.sink.complete


def test_echo_store_and_one_completion(receiver: Receiver, tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path / "ct", slices=6, size=16)
    assoc = _scu().associate("127.0.0.1", receiver.scp.port, ae_title="CT2MRI")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert _send(receiver, paths) == [0] * 6
    series = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert _wait_complete(receiver, 1) == [series]
    spooled = receiver.spool.instance_paths(series)
    assert len(spooled) == 6
    assert pydicom.dcmread(spooled[0]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_series_over_two_associations_completes_once(receiver: Receiver, tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path / "ct", slices=6, size=16)
    scu = _scu()
    first = scu.associate("127.0.0.1", receiver.scp.port, ae_title="CT2MRI")
    second = scu.associate("127.0.0.1", receiver.scp.port, ae_title="CT2MRI")
    assert [int(first.send_c_store(p).Status) for p in paths[:3]] == [0] * 3
    first.release()
    assert [int(second.send_c_store(p).Status) for p in paths[3:]] == [0] * 3
    second.release()
    series = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert _wait_complete(receiver, 1) == [series]
    store = receiver.sink.store
    job = store.claim()                 # a fast worker takes the job and finishes it at once:
    assert job is not None and job.series_uid == series
    store.complete(job.id)              # a second completion would now queue a second job
    # bounded wait: longer than the quiet period and than completion's retry interval, the
    # latest any second report could come; fail as soon as one does
    end = time.monotonic() + max(4 * receiver.config.series.quiet_period_s, completion.RETRY_S) + 0.5
    while time.monotonic() < end:
        assert len(receiver.sink.complete) == 1 and len(store.list()) == 1, (receiver.sink.complete, store.list())
        time.sleep(0.05)
    assert [(j.series_uid, j.state) for j in store.list()] == [(series, "done")]


def test_duplicates_are_ignored_and_compressed_accepted(receiver: Receiver, tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path / "ct", slices=3, size=16, transfer_syntax=RLELossless)
    assert _send(receiver, paths + paths[:2]) == [0] * 5
    series = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert _wait_complete(receiver, 1) == [series]
    spooled = receiver.spool.instance_paths(series)
    assert len(spooled) == 3
    assert pydicom.dcmread(spooled[0]).file_meta.TransferSyntaxUID == RLELossless
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).PixelData for p in spooled}
    assert received == {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).PixelData for p in paths}


def test_unknown_callers_and_wrong_called_ae_rejected(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for calling, called in (("INTRUDER", "CT2MRI"), ("SCANNER", "CT2MRI"), ("PACS", "WRONG")):
        assoc = _scu(calling).associate("127.0.0.1", receiver.scp.port, ae_title=called)
        assert assoc.is_rejected, (calling, called)
    assert "rejected association from calling AE 'INTRUDER'" in caplog.text
    assert "rejected association from calling AE 'SCANNER' at 127.0.0.1" in caplog.text
    # pynetdicom's own called AE check, logged from its rejection event
    assert "rejected association from calling AE 'PACS' at 127.0.0.1: called AE title 'WRONG'" in caplog.text


def test_refused_sop_class_is_logged(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assoc = _scu().associate("127.0.0.1", receiver.scp.port, ae_title="CT2MRI")
    assert assoc.is_established
    assert MRImageStorage in [c.abstract_syntax for c in assoc.rejected_contexts]
    assoc.release()
    assert "refused presentation context" in caplog.text and MRImageStorage in caplog.text


def test_spool_write_failure_answers_out_of_resources(receiver: Receiver, tmp_path: Path) -> None:
    ok = make_ct_series(tmp_path / "ok", seed=1, slices=2, size=16)
    assert _send(receiver, ok) == [0, 0]
    bad = make_ct_series(tmp_path / "bad", seed=2, slices=2, size=16)
    series = str(pydicom.dcmread(bad[0]).SeriesInstanceUID)
    (receiver.spool.incoming / series).write_bytes(b"")   # the series folder cannot be made
    assert _send(receiver, bad) == [0xA700, 0xA700]
    ok_series = str(pydicom.dcmread(ok[0]).SeriesInstanceUID)
    assert len(receiver.spool.instance_paths(ok_series)) == 2   # nothing accepted was lost


def test_dcmtk_storescu(receiver: Receiver, tmp_path: Path) -> None:
    make_ct_series(tmp_path / "ct", slices=5, size=16, shuffle_names=True)
    done = subprocess.run(
        ["storescu", "-aet", "PACS", "-aec", "CT2MRI", "+sd", "127.0.0.1", str(receiver.scp.port),
         str(tmp_path / "ct")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (series,) = _wait_complete(receiver, 1)
    assert len(receiver.spool.instance_paths(series)) == 5


def test_port_zero_and_free_port_helpers(tmp_path: Path) -> None:
    port = free_port()
    config = node_config(tmp_path, node={"ae_title": "CT2MRI", "port": port, "bind_address": "127.0.0.1"})
    assert config.calling_aes == [] and CallingAE(ae_title="X").host is None
    with Receiver(config) as rec:
        assert rec.scp.port == port
        assoc = _scu("ANYONE").associate("127.0.0.1", port, ae_title="CT2MRI")
        assert assoc.is_established   # empty allow-list accepts any caller
        assoc.release()


def _nodelay(assoc: Association) -> int:
    return int(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_both_ends_of_our_associations_send_without_nagle_delay(receiver: Receiver, capture: CaptureSCP) -> None:
    # Nagle + delayed ACK stall every small C-STORE by ~40 ms (ct2mri_node/tcp.py)
    plain = _scu().associate("127.0.0.1", receiver.scp.port, ae_title="CT2MRI")  # a sender that does not set it
    assert plain.is_established
    try:
        (accepted,) = [a for a in receiver.scp._ae.active_associations if a.is_acceptor]
        assert _nodelay(accepted) and not _nodelay(plain)
    finally:
        plain.release()
    destination = DicomDestination(**capture.destination())
    ae = AE(ae_title="CT2MRI")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ours = _associate(ae, destination)          # what send_series and echo open
    try:
        assert _nodelay(ours)
    finally:
        ours.release()


def test_data_set_whose_sop_class_differs_from_its_context_gets_a900(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CT context carrying an MR data set: 0xA900 (data set does not match SOP class), with an
    Error Comment and a log line; nothing spooled; the good slice on the same association is stored."""
    caplog.set_level(logging.WARNING, logger="ct2mri_node.receive.scp")
    good, other = make_ct_series(tmp_path / "ct", slices=2, size=16)
    ds = pydicom.dcmread(other)
    ds.SOPClassUID = MRImageStorage
    wrong = write_raw(tmp_path / "wrong.dcm", ds, CTImageStorage, str(ds.SOPInstanceUID))
    assoc = _scu().associate("127.0.0.1", receiver.scp.port, ae_title="CT2MRI")
    assert assoc.is_established
    try:
        with raw_sending():   # byte for byte, on the context of the file meta's SOP class (CT)
            refused = assoc.send_c_store(wrong)
        stored = assoc.send_c_store(good)
    finally:
        assoc.release()
    assert refused.Status == 0xA900 and "SOP Class UID differs" in refused.ErrorComment
    assert stored.Status == 0x0000
    assert receiver.spool.has_instance(header_from_dataset(ds)) is False
    (record,) = [r for r in caplog.records if "answered 0xA900" in r.getMessage()]
    assert record.levelno == logging.WARNING and "PACS@127.0.0.1" in record.getMessage()


def test_association_limit_is_pynetdicoms_and_its_rejections_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """node.max_associations = 1: pynetdicom itself rejects a second simultaneous association
    (rejected-transient, presentation related, local limit exceeded); the node logs it with the
    caller's AE title and address. After the first closes, a caller gets in again."""
    caplog.set_level(logging.WARNING, logger="ct2mri_node.receive.scp")
    config = node_config(tmp_path, node={"ae_title": "CT2MRI", "port": 0, "bind_address": "127.0.0.1",
                                         "max_associations": 1})
    with Receiver(config) as rec:
        assert rec.scp._ae.maximum_associations == 1
        first = _scu("FIRST").associate("127.0.0.1", rec.scp.port, ae_title="CT2MRI")
        assert first.is_established
        try:
            second = _scu("SECOND").associate("127.0.0.1", rec.scp.port, ae_title="CT2MRI")
            assert second.is_rejected
            rsp = second.acceptor.primitive
            assert (rsp.result, rsp.result_source, rsp.diagnostic) == (0x02, 0x03, 0x02)
            assert first.send_c_echo().Status == 0x0000   # the open one is untouched
        finally:
            first.release()
        records = wait_for(lambda: [r for r in caplog.records if "'SECOND'" in r.getMessage()], 10)
        (record,) = records
        assert record.name == "ct2mri_node.receive.scp" and record.levelno == logging.WARNING
        assert "rejected association from calling AE 'SECOND' at 127.0.0.1" in record.getMessage()
        assert "(node.max_associations=1)" in record.getMessage()
        assert not [r for r in caplog.records if "'FIRST'" in r.getMessage()]

        def third_gets_in() -> bool:    # the server counts an association until its thread ends
            assoc = _scu("THIRD").associate("127.0.0.1", rec.scp.port, ae_title="CT2MRI")
            if assoc.is_established:
                assoc.release()
                return True
            return False

        assert wait_for(third_gets_in, 10, 0.2)
