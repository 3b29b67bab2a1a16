"""A series changed while its MR waits for a down destination, with ``serve`` SIGKILLed before the
changed series becomes a job (issue 21 part 2, across a restart): after the restart the superseded
job stays superseded and the changed series is translated; the destination that comes back gets
only the new MR series."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodekit import CaptureSCP, free_port, make_ct_series, wait_for
from relkit import Serve, expected_mr_uids, job_states, send_until_acked, write_config
from supersedekit import (
    PATIENT_WORKER,
    changed_series,
    deliveries_per_instance,
    down_destination,
    mr_series,
)

from ct2mri_node.commands.status import open_store
from ct2mri_node.model.translator import Translator


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after_spool_before_job@2", "mid_association@13"])
def test_changed_series_survives_a_kill_before_it_became_a_job(
    fault: str, tmp_path: Path, tiny_checkpoint: Path, translator: Translator, capture: CaptureSCP
) -> None:
    later = down_destination()
    port = free_port()
    config = write_config(tmp_path, port, tiny_checkpoint, worker=PATIENT_WORKER,
                          destinations=[capture.destination("archive"), later.destination("later")])
    ct = make_ct_series(tmp_path / "ct", seed=25)          # 12 instances: the 13th stored is the change
    changed = changed_series(ct, tmp_path / "changed")
    first_uid, first_uids = expected_mr_uids(ct, translator)
    second_uid, second_uids = expected_mr_uids(changed, translator)
    log = tmp_path / "serve.log"
    first = Serve(config, log, fault)
    try:
        first.wait_listening()
        send_until_acked(port, ct)
        wait_for(lambda: mr_series(capture).get(first_uid) == first_uids, 120)
        wait_for(lambda: open_store(config).list()[0].attempts >= 2, 60)   # retrying "later"
        try:
            send_until_acked(port, [changed[5]], timeout_s=10)
        except AssertionError:
            pass   # mid_association: killed before it answered; the instance is spooled
        assert first.proc.wait(timeout=60) == -9, f"fault {fault} never fired; see {log}"
    finally:
        first.stop()
    states = job_states(config)
    assert states == ["superseded", "received"], states   # the change was recorded before the kill

    second = Serve(config, log)
    try:
        second.wait_listening()
        wait_for(lambda: mr_series(capture).get(second_uid) == second_uids, 120)
        later.start()
        wait_for(lambda: job_states(config) == ["superseded", "done"], 120)
    finally:
        second.stop()
        later.stop()
    assert mr_series(later) == {second_uid: second_uids}
    assert mr_series(capture) == {first_uid: first_uids, second_uid: second_uids}
    assert deliveries_per_instance(capture) == deliveries_per_instance(later) == {1}
