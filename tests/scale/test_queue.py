"""The queue pieces without processes: priority rules, claims and leases, publishing, the
worker command's checks, and an in-process receiver publishing to a real redis-server."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from nodekit import CLI, make_ct_series, node_config, store, wait_for
from scalekit import Redis

from ct2mri_node.commands.worker import lock_device, worker_config
from ct2mri_node.config import QueueSettings, UrgentRule, parse_config
from ct2mri_node.errors import ConfigError
from ct2mri_node.jobs.queue import JobDispatch, LeasedClaims, Publisher, priority_for
from ct2mri_node.jobs.store import JobStore
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.node import Node


def _store(tmp_path: Path, series: int = 2) -> JobStore:
    jobs = JobStore(tmp_path / "jobs.sqlite3")
    for i in range(series):
        jobs.enqueue(f"1.2.{i}", "1.2.99", time.time())
    return jobs


def test_priority_rules_match_calling_ae_and_series_description() -> None:
    rules = [UrgentRule(calling_ae="ER_CT"), UrgentRule(series_description=r"stroke|urgent", calling_ae="CT2")]
    assert priority_for(rules, "ER_CT", None) == "urgent"
    assert priority_for(rules, "CT2", "Head STROKE protocol") == "urgent"
    assert priority_for(rules, "CT2", "Head routine") == "routine"
    assert priority_for(rules, "CT3", "stroke") == "routine"    # every set field must match
    assert priority_for([], "ER_CT", "stroke") == "routine"


@pytest.mark.parametrize(("queue", "message"), [
    ({"backend": "celery"}, "needs broker_url"),
    ({"backend": "celery", "broker_url": "amqp://x"}, "needs broker_url"),
    ({"urgent": [{}]}, "needs calling_ae, series_description"),
    ({"urgent": [{"series_description": "("}]}, "not a regular expression"),
    ({"brokers": "redis://x"}, "queue.brokers"),
])
def test_queue_config_errors_name_the_key(tmp_path: Path, queue: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"queue": queue}, tmp_path, "test")


def test_claims_are_exclusive_and_urgent_first(tmp_path: Path) -> None:
    jobs = _store(tmp_path)
    a, b = JobDispatch(jobs, 30.0, "a"), JobDispatch(jobs, 30.0, "b")
    assert a.set_priority("1.2.1", "urgent") == 2
    first = a.claim()
    assert first is not None and first.id == 2 and first.state == "translating" and first.attempts == 1
    assert b.claim(2) is None                      # re-delivered task: a live worker holds it
    second = b.claim()
    assert second is not None and second.id == 1
    jobs.complete(1)
    assert a.claim(1) is None                      # finished: nothing to do
    assert a.lease(2)[0] == "a" and a.lease(2)[2] == "urgent"


def test_a_lapsed_lease_hands_the_job_over(tmp_path: Path) -> None:
    jobs = _store(tmp_path, 1)
    dead, alive = JobDispatch(jobs, 0.2, "dead"), JobDispatch(jobs, 0.2, "alive")
    assert dead.claim(1) is not None
    assert alive.claim(1) is None
    time.sleep(0.3)
    assert [j for j, _ in alive.due_for_publish(60.0)] == [1]     # the sweep re-publishes it
    taken = alive.claim(1)
    assert taken is not None and taken.attempts == 2
    assert dead.renew(1) is False                  # the presumed-dead worker learns it lost the job


def test_holding_renews_the_lease_and_releases_it(tmp_path: Path) -> None:
    jobs = _store(tmp_path, 1)
    dispatch = JobDispatch(jobs, 0.3, "w")
    claims = LeasedClaims(dispatch)
    job = claims.claim()
    assert job is not None
    with claims.holding(job):
        time.sleep(0.5)                            # longer than the lease: renewed meanwhile
        assert JobDispatch(jobs, 0.3, "other").claim(job.id) is None
    assert dispatch.lease(job.id)[:2] == (None, None)


def test_publish_due_jobs_once_and_again_when_deferred_or_stale(tmp_path: Path) -> None:
    jobs = _store(tmp_path, 1)
    dispatch = JobDispatch(jobs, 30.0, "r")
    sent: list[tuple[int, str]] = []
    publisher = Publisher(dispatch, lambda j, p: sent.append((j, p)), QueueSettings(republish_after_s=0.3))
    assert publisher.sweep() == 1 and sent == [(1, "routine")]
    assert publisher.sweep() == 0                  # published and not yet stale
    job = dispatch.claim(1)
    assert job is not None
    jobs.defer(1, 0.2, "archive down")             # a send retry later
    dispatch.release(1)
    assert publisher.sweep() == 0                  # not due yet
    time.sleep(0.25)
    assert publisher.sweep() == 1                  # due: published again at once
    time.sleep(0.35)
    assert publisher.sweep() == 1                  # still unclaimed after republish_after_s


def test_a_broker_error_leaves_the_job_for_the_next_sweep(tmp_path: Path) -> None:
    dispatch = JobDispatch(_store(tmp_path, 1), 30.0, "r")

    def down(job_id: int, priority: str) -> None:
        raise ConnectionError("broker down")

    assert Publisher(dispatch, down, QueueSettings()).sweep() == 0
    assert dispatch.due_for_publish(60.0) == [(1, "routine")]


def test_worker_needs_the_celery_backend_and_a_valid_device(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="queue.backend: celery"):
        worker_config(node_config(tmp_path), None)
    celery = node_config(tmp_path, queue={"backend": "celery", "broker_url": "redis://127.0.0.1:1/0"})
    assert worker_config(celery, "cuda:1").model.device == "cuda:1"
    with pytest.raises(ConfigError, match="--device"):
        worker_config(celery, "tpu")
    with pytest.raises(ConfigError, match="needs queue.backend: celery"):
        Node(node_config(tmp_path), role="receiver")


def test_one_worker_per_gpu_on_a_machine(tmp_path: Path) -> None:
    assert lock_device("cpu", tmp_path) is None
    held = lock_device("cuda", tmp_path)
    try:
        with pytest.raises(ConfigError, match="cuda:0 is already used"):
            lock_device("cuda:0", tmp_path)
        other = lock_device("cuda:1", tmp_path)
        assert other is not None
        other.close()
    finally:
        assert held is not None
        held.close()


def test_worker_command_refuses_the_local_queue(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"spool_dir": "spool"}))
    done = subprocess.run([*CLI, "worker", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "needs queue.backend: celery" in done.stderr


@pytest.mark.slow
def test_receiver_publishes_job_ids_to_the_urgent_queue_by_calling_ae(
    tmp_path: Path, redis_server: Redis
) -> None:
    queue = {"backend": "celery", "broker_url": redis_server.url, "urgent": [{"calling_ae": "ER_CT"}],
             "sweep_interval_s": 0.2}
    node = Node(node_config(tmp_path, queue=queue), role="receiver")
    node.start()
    try:
        store(node.port, make_ct_series(tmp_path / "er", seed=70), calling="ER_CT")
        store(node.port, make_ct_series(tmp_path / "ward", seed=71), calling="WARD")
        wait_for(lambda: redis_server.queue_length("urgent") == 1 and redis_server.queue_length("routine") == 1, 20)
    finally:
        node.stop()
    assert node.dispatch is not None and node.store is not None
    by_ae = {j.id: node.dispatch.lease(j.id)[2] for j in node.store.list()}
    assert sorted(by_ae.values()) == ["routine", "urgent"]
    assert {j.state for j in node.store.list()} == {"queued"}    # nobody translates in a receiver


@pytest.mark.slow
def test_serve_all_with_the_celery_backend_translates_in_process(
    tmp_path: Path, redis_server: Redis, tiny_checkpoint: Path
) -> None:
    translator = Translator(tiny_checkpoint, TranslationSettings(steps=2, device="cpu"))
    config = node_config(tmp_path, queue={"backend": "celery", "broker_url": redis_server.url},
                         destinations=[{"name": "out", "type": "folder", "path": "out"}])
    node = Node(config, translator=translator)
    node.start()
    try:
        store(node.port, make_ct_series(tmp_path / "ct", seed=72))
        wait_for(lambda: [j.state for j in node.store.list()] == ["done"] if node.store else False, 60)
    finally:
        node.stop()
    assert len(list((tmp_path / "out").glob("*/*.dcm"))) == 12
