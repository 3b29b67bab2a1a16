"""The scale-out topology on a real PostgreSQL job store (``job_store.url``) and a real redis-server.

Receivers and workers share the spool's files but keep job records, leases and provenance in a
throw-away PostgreSQL server (tests/scale/scalekit.py: ``initdb`` in a temporary folder on a free
loopback port). Each destination must hold every MR instance exactly once, through concurrent
senders, a worker SIGKILLed mid-job, and a database restarted (fast shutdown) under load; and
two workers with their own connections racing for one job never both get it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import CaptureSCP, free_port, make_ct_series, wait_for
from relkit import job_states, send_until_acked
from scalekit import (Postgres, Redis, all_done, assert_exactly_once, receiver, require_postgres, scale_config,
                      send_all, start_postgres, stop_all, worker)

from ct2mri_node.commands.status import open_store
from ct2mri_node.config import parse_config
from ct2mri_node.errors import SpoolError
from ct2mri_node.jobs.database import mask_url
from ct2mri_node.jobs.queue import JobDispatch
from ct2mri_node.jobs.store import JobStore, open_job_store


def _config(tmp_path: Path, port: int, checkpoint: Path, redis: Redis, db_url: str, capture: CaptureSCP) -> Path:
    return scale_config(tmp_path, port, checkpoint, redis.url, destinations=[capture.destination()],
                        job_store={"url": db_url})




@pytest.mark.slow
def test_four_series_two_workers_through_postgres_each_delivered_once(
    tmp_path: Path, tiny_checkpoint: Path, redis_server: Redis, postgres_server: Postgres, capture: CaptureSCP
) -> None:
    port = free_port()
    db_url = postgres_server.database()
    config = _config(tmp_path, port, tiny_checkpoint, redis_server, db_url, capture)
    series = [make_ct_series(tmp_path / f"ct{i}", seed=70 + i) for i in range(4)]
    procs = [receiver(config, tmp_path / "receiver.log"),
             worker(config, tmp_path / "w1.log"), worker(config, tmp_path / "w2.log")]
    try:
        for proc in procs:
            proc.wait_ready()
        send_all(port, series)
        wait_for(lambda: all_done(config, 4), 180, 0.2)
    finally:
        stop_all(procs)
    assert_exactly_once(capture, 4, 12)
    jobs = JobStore(db_url).list()               # the records are in PostgreSQL ...
    assert len(jobs) == 4 and all(j.attempts == 1 for j in jobs)
    assert not (tmp_path / "spool" / "jobs.sqlite3").exists()   # ... and not in the spool
    assert [j.id for j in open_store(config).list()] == [j.id for j in jobs]   # status reads the same store
    ran = [(tmp_path / f"w{i}.log").read_text().count(", attempt ") for i in (1, 2)]
    assert sum(ran) == 4 and min(ran) >= 1, f"both workers should have run jobs, ran {ran}"


@pytest.mark.slow
def test_worker_killed_mid_job_leaves_it_to_the_other_through_postgres(
    tmp_path: Path, tiny_checkpoint: Path, redis_server: Redis, postgres_server: Postgres, capture: CaptureSCP
) -> None:
    port = free_port()
    config = _config(tmp_path, port, tiny_checkpoint, redis_server, postgres_server.database(), capture)
    ct = make_ct_series(tmp_path / "ct", seed=80)
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
    assert open_store(config).list()[0].attempts == 2
    assert "taking it over" in (tmp_path / "survivor.log").read_text()


@pytest.mark.slow
def test_database_restarted_under_load_loses_no_accepted_series(
    tmp_path: Path, tiny_checkpoint: Path, redis_server: Redis, postgres_server: Postgres, capture: CaptureSCP
) -> None:
    port = free_port()
    config = _config(tmp_path, port, tiny_checkpoint, redis_server, postgres_server.database(), capture)
    series = [make_ct_series(tmp_path / f"ct{i}", seed=90 + i) for i in range(3)]
    procs = [receiver(config, tmp_path / "receiver.log"), worker(config, tmp_path / "w1.log")]
    try:
        for proc in procs:
            proc.wait_ready()
        send_all(port, series[:1])
        wait_for(lambda: len(job_states(config)) == 1, 60, 0.1)
        sender = threading.Thread(target=send_all, args=(port, series[1:]), daemon=True)
        sender.start()                  # two more series arrive while the database restarts
        wait_for(lambda: len(job_states(config)) >= 2, 60, 0.05)
        postgres_server.restart()       # pg_ctl stop -m fast, then start: every connection drops
        sender.join(timeout=180)
        assert not sender.is_alive()
        wait_for(lambda: all_done(config, 3), 180, 0.3)
        assert all(proc.proc.poll() is None for proc in procs), "a role died with the database"
    finally:
        stop_all(procs)
        postgres_server.ensure_running()
    assert_exactly_once(capture, 3, 12)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_racing_for_one_job_never_both_get_it(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """200 rounds: one job queued, two workers (each with its own store and connections) claim
    at the same instant, by id (a task) or the oldest due (a poll); exactly one wins each time."""
    location: str | Path = (tmp_path / "jobs.sqlite3" if backend == "sqlite"
                            else request.getfixturevalue("postgres_server").database())
    setup = JobStore(location)
    workers = [JobDispatch(JobStore(location), lease_s=60, owner=f"w{i}") for i in range(2)]
    rounds = 200
    wins: list[list[int]] = [[] for _ in workers]
    barrier = threading.Barrier(2)

    def race(i: int, job_id: int, by_id: bool) -> None:
        barrier.wait()
        job = workers[i].claim(job_id if by_id else None)
        if job is not None:
            wins[i].append(job.id)

    for n in range(rounds):
        job_id = setup.enqueue(f"1.2.{n}", "1.2")
        threads = [threading.Thread(target=race, args=(i, job_id, n % 2 == 0)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        setup.complete(job_id)
        won = [job_id in w for w in wins]
        assert sum(won) == 1, f"round {n}: job {job_id} claimed by {sum(won)} workers"
    assert len(wins[0]) + len(wins[1]) == rounds
    assert all(j.attempts == 1 for j in setup.list())


def test_lease_taken_over_only_while_lapsed_on_postgres(postgres_server: Postgres) -> None:
    url = postgres_server.database()
    store = JobStore(url)
    first, second = JobDispatch(JobStore(url), lease_s=0.3, owner="a"), JobDispatch(JobStore(url), lease_s=0.3, owner="b")
    job_id = store.enqueue("1.9", "1")
    assert first.claim() is not None
    assert second.claim(job_id) is None                  # a live lease: no takeover
    wait_for(lambda: second.claim(job_id) is not None, 10, 0.1)   # lapsed: b takes it over
    assert not first.renew(job_id) and second.renew(job_id)
    assert store.get(job_id).attempts == 2 and first.lease(job_id)[0] == "b"


def test_password_never_shown_and_bad_urls_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert mask_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    dead = f"postgresql://ct2mri:s3cret@127.0.0.1:{free_port()}/ct2mri"   # nothing listens there
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SpoolError) as info:
        JobStore(dead, connect_timeout_s=0.5)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert "s3cret" not in caplog.text
    with pytest.raises(SpoolError, match="only SQLite paths and postgresql"):
        JobStore("mysql://u@h/db")
    with pytest.raises(Exception, match="postgresql://USER"):
        parse_config({"job_store": {"url": "sqlite:///x"}}, tmp_path)


@pytest.fixture
def scram_server() -> Iterator[Postgres]:
    """A server of this test's own that lets in only the password, by scram-sha-256."""
    require_postgres()
    server = start_postgres(password=SECRET)
    yield server
    server.remove()


SECRET = "scram-s3cret-9f2"


def test_password_reaches_a_scram_server_and_never_the_messages(
    tmp_path: Path, scram_server: Postgres, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    url = scram_server.database()               # no password in it
    assert SECRET not in url

    def store_with(**job_store: object) -> JobStore:
        config = parse_config({"spool_dir": "spool", "job_store": {"url": url, "connect_timeout_s": 0.5,
                                                                     **job_store}}, tmp_path)
        return open_job_store(config)

    monkeypatch.setenv("CT2MRI_DB_PASSWORD", "not-the-password")
    with pytest.raises(SpoolError, match="password authentication failed") as wrong:
        store_with(password_env="CT2MRI_DB_PASSWORD")
    assert "not-the-password" not in str(wrong.value)
    with pytest.raises(SpoolError):              # no password at all: refused too
        JobStore(url, connect_timeout_s=0.5)
    # the right password from an environment variable, then from a file, gets in
    monkeypatch.setenv("CT2MRI_DB_PASSWORD", SECRET)
    assert store_with(password_env="CT2MRI_DB_PASSWORD").enqueue("1.5", "1") == 1
    monkeypatch.delenv("CT2MRI_DB_PASSWORD")
    (tmp_path / "db.password").write_text(SECRET + "\n")
    assert [j.series_uid for j in store_with(password_file="db.password").list()] == ["1.5"]
    assert SECRET not in caplog.text and "not-the-password" not in caplog.text


def test_migrate_store_keeps_the_spools_history(tmp_path: Path, postgres_server: Postgres) -> None:
    from ct2mri_node.cli import main

    (tmp_path / "spool").mkdir()
    old = JobStore(tmp_path / "spool" / "jobs.sqlite3")
    for i in range(3):
        old.series_complete(f"1.3.{i}", "1.3", 0.0)
    dispatch = JobDispatch(old, owner="w")
    done = dispatch.claim()
    assert done is not None
    old.record_timing(done.id, "translation", 2.5)
    old.record_delivery(done.id, "archive", "done")
    old.record_provenance(done.id, {"model": "m"})
    old.complete(done.id)
    url = postgres_server.database()
    config = tmp_path / "c.yaml"
    config.write_text("spool_dir: spool\n")
    assert main(["migrate-store", "--config", str(config), "--to", url]) == 0
    new = JobStore(url)
    assert [(j.id, j.state, j.timings, j.deliveries) for j in new.list()] == \
        [(j.id, j.state, j.timings, j.deliveries) for j in old.list()]
    assert new.provenance(done.id) == {"model": "m"}
    assert JobDispatch(new).lease(done.id) == JobDispatch(old).lease(done.id)
    assert new.enqueue("1.3.9", "1.3") == 4              # ids continue after the copied ones
    assert main(["migrate-store", "--config", str(config), "--to", url]) != 0   # never merged twice
