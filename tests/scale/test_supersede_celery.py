"""With the Celery backend (a receiver and a worker process on a real redis-server), a series
changed while its MR waits for a down destination is translated again (issue 21 part 2): the
receiver supersedes the old job in the shared job store, no worker claims it again, and the
destination that comes back gets only the new MR series."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodekit import CaptureSCP, free_port, make_ct_series, wait_for
from relkit import expected_mr_uids, job_states, send_until_acked
from scalekit import Redis, receiver, scale_config, stop_all, worker
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
def test_changed_series_with_a_destination_down_celery(
    tmp_path: Path, tiny_checkpoint: Path, translator: Translator, redis_server: Redis, capture: CaptureSCP
) -> None:
    later = down_destination()
    port = free_port()
    config = scale_config(tmp_path, port, tiny_checkpoint, redis_server.url, worker=PATIENT_WORKER,
                          destinations=[capture.destination("archive"), later.destination("later")])
    ct = make_ct_series(tmp_path / "ct", seed=26)
    changed = changed_series(ct, tmp_path / "changed")
    first_uid, first_uids = expected_mr_uids(ct, translator)
    second_uid, second_uids = expected_mr_uids(changed, translator)
    procs = [receiver(config, tmp_path / "receiver.log"), worker(config, tmp_path / "worker.log")]
    try:
        for proc in procs:
            proc.wait_ready()
        send_until_acked(port, ct)
        wait_for(lambda: mr_series(capture).get(first_uid) == first_uids, 120)
        wait_for(lambda: open_store(config).list()[0].attempts >= 2, 60)   # retrying "later"
        send_until_acked(port, [changed[5]])
        wait_for(lambda: mr_series(capture).get(second_uid) == second_uids, 120)
        assert job_states(config)[0] == "superseded"
        later.start()
        wait_for(lambda: job_states(config) == ["superseded", "done"], 120, 0.2)
    finally:
        stop_all(procs)
        later.stop()
    assert mr_series(later) == {second_uid: second_uids}
    assert mr_series(capture) == {first_uid: first_uids, second_uid: second_uids}
    assert deliveries_per_instance(capture) == deliveries_per_instance(later) == {1}
    old = open_store(config).list()[0]
    assert {d.destination: d.state for d in old.deliveries} == {"archive": "done", "later": "superseded"}
