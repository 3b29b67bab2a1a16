"""A CT series that changes while its previous MR is still being sent (or translated) is
translated again (issue 21 part 2), over real associations: the changed series gets a new job and
a new MR series (UIDs from the new pixels); the old job ends ``superseded`` and its MR goes to no
destination that had not confirmed it. Restart: tests/reliability/test_supersede_restart.py;
Celery: tests/scale/test_supersede_celery.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from nodekit import (
    CaptureSCP,
    http_get,
    make_ct_series,
    node_config,
    send,
    started_nodes,
    store,
    wait_for,
)
from relkit import expected_mr_uids
from supersedekit import (
    PATIENT_WORKER,
    changed_series,
    deliveries_per_instance,
    down_destination,
    mr_series,
)

from ct2mri_node.config import NodeConfig
from ct2mri_node.node import Node
from ct2mri_node.receive.spool import Spool, StoreOutcome, read_header


def test_changed_while_a_destination_is_down_only_the_new_mr_reaches_it(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, translator: Any, tmp_path: Path
) -> None:
    later = down_destination()
    try:
        node = start_node(node_config(
            tmp_path, destinations=[capture.destination("archive"), later.destination("later")],
            worker=PATIENT_WORKER, ops={"http_port": 0}))
        assert node.store is not None and node.health is not None
        ct = make_ct_series(tmp_path / "ct", seed=23)
        changed = changed_series(ct, tmp_path / "changed")
        first_uid, first_uids = expected_mr_uids(ct, translator)
        second_uid, second_uids = expected_mr_uids(changed, translator)
        assert second_uid != first_uid and not second_uids & first_uids   # new pixels, new UIDs

        # 1. the series goes in; its MR reaches the archive, the job keeps retrying "later"
        send(node.port, ct)
        wait_for(lambda: mr_series(capture).get(first_uid) == first_uids, 120)
        (job,) = wait_for(lambda: [j for j in node.store.list() if j.attempts >= 2], 60)
        assert {d.destination: d.state for d in job.deliveries} == {"archive": "done", "later": "pending"}

        # 2. the same series re-sent with changed pixels under the same UIDs
        send(node.port, changed)
        wait_for(lambda: mr_series(capture).get(second_uid) == second_uids, 120)
        old = node.store.get(job.id)
        assert old.state == "superseded", (old.state, old.reason)
        assert {d.destination: d.state for d in old.deliveries} == {"archive": "done", "later": "superseded"}

        # 3. "later" comes back: it gets the new MR series only
        later.start()
        jobs = wait_for(lambda: (js := node.store.list()) and js[-1].state == "done" and js, 120)
        assert [j.state for j in jobs] == ["superseded", "done"], [j.reason for j in jobs]
        assert mr_series(later) == {second_uid: second_uids}
        assert mr_series(capture) == {first_uid: first_uids, second_uid: second_uids}
        assert deliveries_per_instance(capture) == deliveries_per_instance(later) == {1}
        assert node.store.get(job.id).state == "superseded" and node.store.get(job.id).attempts == old.attempts

        # status, metrics and the status page show the state
        metrics = node.metrics.exposition().decode()
        assert 'ct2mri_jobs{state="superseded"} 1.0' in metrics
        assert "ct2mri_jobs_superseded_total 1.0" in metrics
        code, page = http_get(node.health.port, "/?state=superseded")
        assert code == 200 and f'href="/jobs/{job.id}"' in page.decode() and "superseded (1)" in page.decode()
        code, page = http_get(node.health.port, f"/jobs/{job.id}")
        assert code == 200 and f"superseded by job {jobs[-1].id}" in page.decode()
    finally:
        later.stop()


class GatedTranslator:
    """The real translator, held at its first translation until the test opens the gate."""

    def __init__(self, translator: Any) -> None:
        self._translator = translator
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0

    def translate(self, ct_hu: np.ndarray, spacing: tuple[float, float, float], progress: Any = None) -> Any:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.gate.wait(120), "the test never opened the gate"
        return self._translator.translate(ct_hu, spacing, progress)


def test_changed_while_translating_the_old_mr_is_sent_nowhere(
    capture: CaptureSCP, translator: Any, tmp_path: Path
) -> None:
    gated = GatedTranslator(translator)
    ct = make_ct_series(tmp_path / "ct", seed=24)
    changed = changed_series(ct, tmp_path / "changed")
    first_uid, _ = expected_mr_uids(ct, translator)
    second_uid, second_uids = expected_mr_uids(changed, translator)
    with started_nodes(gated) as start:
        node = start(node_config(tmp_path, destinations=[capture.destination()]))
        assert node.store is not None
        send(node.port, ct)
        assert gated.entered.wait(120), "the job never started translating"
        (job,) = node.store.list()
        assert job.state == "translating"
        # the changed instance arrives while the old pixels are being translated
        assert store(node.port, [changed[5]]) == [0]
        wait_for(lambda: node.store.get(job.id).state == "superseded", 30)
        gated.gate.set()
        jobs = wait_for(lambda: (js := node.store.list()) and len(js) == 2 and js[-1].state == "done" and js, 120)
        assert [j.state for j in jobs] == ["superseded", "done"], [j.reason for j in jobs]
        assert node.store.get(job.id).translated    # it finished translating, and sent nothing
    assert gated.calls == 2
    assert mr_series(capture) == {second_uid: second_uids}
    assert first_uid not in mr_series(capture)
    assert deliveries_per_instance(capture) == {1}


def test_a_change_made_durable_just_before_a_crash_is_found_at_start(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, translator: Any, tmp_path: Path
) -> None:
    """The changed instance reached the spool, then the node stopped before any job recorded it
    (a crash between the spool's write and the job store; the sender got no answer). At the next
    start the spool is newer than the job's input: the series is translated again."""
    later = down_destination()
    config = node_config(tmp_path, destinations=[capture.destination("archive"), later.destination("later")],
                         worker=PATIENT_WORKER)
    ct = make_ct_series(tmp_path / "ct", seed=27)
    changed = changed_series(ct, tmp_path / "changed")
    first_uid, first_uids = expected_mr_uids(ct, translator)
    second_uid, second_uids = expected_mr_uids(changed, translator)
    try:
        node = start_node(config)
        assert node.store is not None
        send(node.port, ct)
        wait_for(lambda: mr_series(capture).get(first_uid) == first_uids, 120)
        (job,) = wait_for(lambda: [j for j in node.store.list() if j.attempts >= 2], 60)
        node.stop()
        spool = Spool(config.spool_dir)          # what the crashed process left: the new bytes only
        assert spool.store(changed[5].read_bytes(), read_header(changed[5])) is StoreOutcome.REPLACED

        node = start_node(config)
        assert node.store is not None
        wait_for(lambda: mr_series(capture).get(second_uid) == second_uids, 120)
        assert node.store.get(job.id).state == "superseded"
        later.start()
        jobs = wait_for(lambda: (js := node.store.list()) and js[-1].state == "done" and js, 120)
        assert [j.state for j in jobs] == ["superseded", "done"], [j.reason for j in jobs]
    finally:
        later.stop()
    assert mr_series(later) == {second_uid: second_uids}
    assert deliveries_per_instance(capture) == deliveries_per_instance(later) == {1}
