"""One receiver and worker processes on a real redis-server, sharing a temporary spool.

Each destination must hold every MR series exactly once (the capture SCP counts C-STOREs, so a
job run twice would show up as repeated SOP Instance UIDs), after concurrent senders, a worker
SIGKILLed in the middle of a translation, and a broker restarted without persistence.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nodekit import CaptureSCP, free_port, make_ct_series, wait_for
from relkit import send_until_acked
from scalekit import Redis, all_done, assert_exactly_once, receiver, scale_config, send_all, stop_all, worker

from ct2mri_node.commands.status import open_store
from ct2mri_node.jobs.queue import JobDispatch










@pytest.mark.slow
def test_four_series_at_once_two_workers_each_delivered_once(
    tmp_path: Path, tiny_checkpoint: Path, redis_server: Redis, capture: CaptureSCP
) -> None:
    port = free_port()
    config = scale_config(tmp_path, port, tiny_checkpoint, redis_server.url, destinations=[capture.destination()])
    series = [make_ct_series(tmp_path / f"ct{i}", seed=40 + i) for i in range(4)]
    procs = [receiver(config, tmp_path / "receiver.log"),
             worker(config, tmp_path / "w1.log"), worker(config, tmp_path / "w2.log")]
    try:
        for proc in procs:
            proc.wait_ready()
        send_all(port, series)
        wait_for(lambda: all_done(config, 4), 120, 0.2)
    finally:
        stop_all(procs)
    assert_exactly_once(capture, 4, 12)
    jobs = open_store(config).list()
    assert all(j.attempts == 1 for j in jobs)
    # workers of a cluster record last CT -> MR confirmed too (provenance last_ct_to_confirmed_s)
    assert all(j.timings.get("latency:archive", 0.0) > 0 for j in jobs), [j.timings for j in jobs]
    ran = [(tmp_path / f"w{i}.log").read_text().count(", attempt ") for i in (1, 2)]
    assert sum(ran) == 4 and min(ran) >= 1, f"both workers should have run jobs, ran {ran}"


@pytest.mark.slow
def test_worker_killed_mid_translation_leaves_the_job_to_the_other(
    tmp_path: Path, tiny_checkpoint: Path, redis_server: Redis, capture: CaptureSCP
) -> None:
    port = free_port()
    config = scale_config(tmp_path, port, tiny_checkpoint, redis_server.url, destinations=[capture.destination()])
    ct = make_ct_series(tmp_path / "ct", seed=50)
    rcv = receiver(config, tmp_path / "receiver.log")
    doomed = worker(config, tmp_path / "doomed.log", fault="during_translation")
    procs = [rcv, doomed]
    try:
        rcv.wait_ready()
        doomed.wait_ready()
        send_until_acked(port, ct)
        assert doomed.proc.wait(timeout=120) == -9, "the fault never fired"
        job = open_store(config).list()[0]
        assert job.state == "translating" and not job.translated
        survivor = worker(config, tmp_path / "survivor.log")
        procs.append(survivor)
        survivor.wait_ready()
        wait_for(lambda: all_done(config, 1), 120, 0.2)
    finally:
        stop_all(procs)
    assert_exactly_once(capture, 1, 12)
    job = open_store(config).list()[0]
    assert job.attempts == 2
    assert "taking it over" in (tmp_path / "survivor.log").read_text()


@pytest.mark.slow
def test_broker_restarted_without_persistence_loses_nothing(
    tmp_path: Path, tiny_checkpoint: Path, capture: CaptureSCP
) -> None:
    broker = Redis(tmp_path / "redis", appendonly=False).start()   # a restart empties it
    port = free_port()
    config = scale_config(tmp_path, port, tiny_checkpoint, broker.url, destinations=[capture.destination()])
    series = [make_ct_series(tmp_path / f"ct{i}", seed=60 + i) for i in range(3)]
    rcv = receiver(config, tmp_path / "receiver.log")
    procs = [rcv]
    try:
        rcv.wait_ready()
        send_all(port, series)   # published while no worker consumes: they wait in the broker
        store = open_store(config)
        wait_for(lambda: sum(broker.queue_length(q) for q in ("routine", "urgent")) == 3, 30, 0.1)
        broker.restart()
        assert broker.queue_length("routine") == 0   # the broker forgot every job id
        procs.append(worker(config, tmp_path / "w1.log"))
        procs[-1].wait_ready()
        wait_for(lambda: any(j.state != "queued" for j in store.list()), 60, 0.05)
        broker.restart()              # again, now with a worker connected and a job running
        wait_for(lambda: all_done(config, 3), 120, 0.2)
    finally:
        stop_all(procs)
        broker.stop()
    assert_exactly_once(capture, 3, 12)
    assert {j.state for j in store.list()} == {"done"}
    assert all(JobDispatch(store).lease(j.id)[0] is None for j in store.list())   # leases released
