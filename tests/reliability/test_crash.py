"""Crash safety: ``serve`` SIGKILLs itself at named points, restarts, and nothing is lost or doubled.

Every instance answered 0x0000 is in the spool after the restart, and each destination (a
capture SCP and a folder) holds exactly the MR series an uninterrupted run produces: one
series UID, the same SOP Instance UIDs, no other series.

Every instance the capture SCP receives is counted, before the kill and after the restart:

- a destination the job store records as done before the kill gets nothing more;
- a kill before any send (``mid_association``, ``after_spool_before_job``,
  ``during_translation``, ``after_translation``) delivers each instance exactly once;
- a kill while sends are in flight (``between_sends``: the other destination may be mid-send;
  ``after_send_before_record``: the destination has the series, the job store does not know)
  cannot avoid a duplicate: what arrived before the kill is at most one copy of each instance,
  and the restart sends the whole series exactly once more.

The folder destination overwrites by name, so copies cannot be counted there; a folder recorded
as done before the kill must not be written again (no file changes after the restart).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from nodekit import CaptureSCP, free_port, make_ct_series, wait_for
from relkit import Serve, expected_mr_uids, folder_uids, job_states, send_until_acked, write_config

from ct2mri_node.commands.status import open_store
from ct2mri_node.faults import POINTS as FAULT_POINTS
from ct2mri_node.model.translator import Translator
from ct2mri_node.receive.spool import Spool

#: Every fault point; mid_association is killed while answering the 5th instance of the association.
POINTS = [f"{point}@5" if point == "mid_association" else point for point in FAULT_POINTS]
#: Points where a send can be in flight when the process dies: one re-send cannot be avoided.
SENDING = {"between_sends", "after_send_before_record"}


class Sender(threading.Thread):
    """:func:`send_until_acked` in a thread; :meth:`result` re-raises what it raised."""

    def __init__(self, port: int, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.port, self.paths = port, paths
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            send_until_acked(self.port, self.paths)
        except BaseException as exc:  # noqa: BLE001 (handed to the test by result())
            self.error = exc

    def result(self, timeout_s: float) -> None:
        self.join(timeout=timeout_s)
        assert not self.is_alive(), "the sender is still sending"
        if self.error is not None:
            raise self.error


def _done_destinations(config: Path) -> set[str]:
    """Destinations the job store records as done (none when there is no job yet)."""
    try:
        jobs = open_store(config).list()
    except Exception:  # noqa: BLE001 (no database yet: the kill came before the first job)
        return set()
    return {d.destination for j in jobs for d in j.deliveries if d.state == "done"}


def _counts(capture: CaptureSCP) -> Counter[str]:
    with capture.lock:
        return Counter(str(d.SOPInstanceUID) for d in capture.datasets)


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
    sender = Sender(port, ct)
    sender.start()
    assert first.proc.wait(timeout=120) == -9, f"fault {fault} never fired; see {log}"
    done_at_kill = _done_destinations(config)
    before = _counts(capture)                       # what the archive got before the kill
    restarted_at = time.time()
    second = Serve(config, log)
    try:
        second.wait_listening()
        sender.result(timeout_s=120)
        wait_for(lambda: job_states(config) and all(s == "done" for s in job_states(config)), 120)
    finally:
        second.stop()
    ct_series = str(pydicom.dcmread(ct[0]).SeriesInstanceUID)
    assert len(Spool(tmp_path / "spool").instance_paths(ct_series)) == len(ct)

    # the folder: exactly the series' files; untouched after the restart if it was done before
    outbox = tmp_path / "outbox"
    files = folder_uids(outbox)
    assert list(files) == [series_uid]
    assert {name.split("_", 1)[1][:-4] for name in files[series_uid]} == sop_uids
    if "local" in done_at_kill:
        rewritten = [p.name for p in (outbox / series_uid).glob("*.dcm") if p.stat().st_mtime >= restarted_at]
        assert not rewritten, f"folder destination written again after the restart: {rewritten}"

    # the archive: every instance counted, before the kill and after the restart
    assert {str(d.SeriesInstanceUID) for d in capture.datasets} == {series_uid}
    after = _counts(capture) - before
    assert set(before) <= sop_uids and set(after) <= sop_uids
    promise: dict[str, Any] = {"before": before, "after": after, "done at kill": done_at_kill}
    if "archive" in done_at_kill:                   # recorded: never sent again
        assert before == Counter(dict.fromkeys(sop_uids, 1)) and not after, promise
    elif fault in SENDING:                          # at most one copy before, one whole send after
        assert set(before.values()) <= {1} and after == Counter(dict.fromkeys(sop_uids, 1)), promise
    else:                                           # nothing sent before the kill: exactly once
        assert not before and after == Counter(dict.fromkeys(sop_uids, 1)), promise
