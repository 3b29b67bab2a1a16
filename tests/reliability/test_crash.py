"""Crash safety: ``serve`` SIGKILLs itself at named points, restarts, and nothing is lost or doubled.

Every instance answered 0x0000 is in the spool after the restart, and each destination (a
capture SCP and a folder) holds exactly the MR series an uninterrupted run produces: one
series UID, the same SOP Instance UIDs, no other series.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from nodekit import CaptureSCP, free_port, make_ct_series, wait_for
from relkit import Serve, expected_mr_uids, folder_uids, job_states, send_until_acked, write_config

from ct2mri_node.faults import POINTS as FAULT_POINTS
from ct2mri_node.model.translator import Translator
from ct2mri_node.receive.spool import Spool

#: Every fault point; mid_association is killed while answering the 5th instance of the association.
POINTS = [f"{point}@5" if point == "mid_association" else point for point in FAULT_POINTS]


@pytest.mark.slow
@pytest.mark.parametrize("fault", POINTS)
def test_kill_at_named_point_then_restart(
    fault: str, tmp_path: Path, tiny_checkpoint: Path, translator: Translator, capture: CaptureSCP
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, tiny_checkpoint,
                          destinations=[capture.destination(), {"name": "local", "type": "folder", "path": "outbox"}])
    ct = make_ct_series(tmp_path / "ct", seed=21)
    series_uid, sop_uids = expected_mr_uids(ct, translator)
    log = tmp_path / "serve.log"
    first = Serve(config, log, fault)
    first.wait_listening()
    sender = threading.Thread(target=send_until_acked, args=(port, ct), daemon=True)
    sender.start()
    assert first.proc.wait(timeout=120) == -9, f"fault {fault} never fired; see {log}"
    second = Serve(config, log)
    try:
        second.wait_listening()
        sender.join(timeout=120)
        assert not sender.is_alive()
        wait_for(lambda: job_states(config) and all(s == "done" for s in job_states(config)), 120)
    finally:
        second.stop()
    ct_series = str(pydicom.dcmread(ct[0]).SeriesInstanceUID)
    assert len(Spool(tmp_path / "spool").instance_paths(ct_series)) == len(ct)
    files = folder_uids(tmp_path / "outbox")
    assert list(files) == [series_uid]
    assert {name.split("_", 1)[1][:-4] for name in files[series_uid]} == sop_uids
    assert {str(d.SeriesInstanceUID) for d in capture.datasets} == {series_uid}
    assert {str(d.SOPInstanceUID) for d in capture.datasets} == sop_uids
