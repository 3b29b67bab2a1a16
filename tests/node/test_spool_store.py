"""Spool durability rules, completion timing and the job store, on SQLite and on a throw-away
PostgreSQL server (the job store tests run on both)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from nodekit import RecordingSink, make_ct_series

from ct2mri_node.errors import JobError, SpoolError
from ct2mri_node.jobs.store import JobStore
from ct2mri_node.receive.completion import CompletionWatcher
from ct2mri_node.receive.spool import InstanceHeader, Spool, StoreOutcome, is_valid_uid, read_header


@pytest.fixture(scope="module")
def _postgres() -> Iterator[object]:
    """A PostgreSQL server for this module's job store tests (tests/scale/scalekit.py starts it)."""
    from scalekit import require_postgres, start_postgres

    require_postgres()
    server = start_postgres()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a job store test keeps its jobs: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite3"
    return str(request.getfixturevalue("_postgres").database())


HEADER = InstanceHeader("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.3.4", "1.2.3")


def test_uid_validation() -> None:
    assert is_valid_uid("1.2.840.10008.1.2")
    for bad in ("", "1..2", "../../etc", "1.2.a", "1." * 40 + "1", None, "1.2 "):
        assert not is_valid_uid(bad)


def test_store_duplicate_and_replace(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    assert spool.store(b"first", HEADER) is StoreOutcome.STORED
    assert spool.store(b"first", HEADER) is StoreOutcome.DUPLICATE
    assert spool.store(b"second", HEADER) is StoreOutcome.REPLACED
    (path,) = spool.instance_paths("1.2.3.4")
    assert path.read_bytes() == b"second" and path.name == "1.2.3.4.5.dcm"
    assert "different content" in caplog.text
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]


def test_store_failure_raises_spool_error_and_keeps_accepted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    spool.store(b"kept", HEADER)
    # A file where the next series' folder must go: the write fails like a broken disk would.
    (spool.incoming / "1.2.9").write_bytes(b"")
    with pytest.raises(SpoolError, match="cannot write to the spool"):
        spool.store(b"x", InstanceHeader(HEADER.sop_class_uid, "1.2.9.1", "1.2.9", "1.2.3"))
    assert spool.instance_paths("1.2.3.4")[0].read_bytes() == b"kept"


def test_counts_survive_a_restart_and_a_removed_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    for n in range(3):
        spool.store([b"meta", memoryview(b"x" * n)], InstanceHeader(HEADER.sop_class_uid, f"1.2.3.4.{n}", "1.2.3.4", "1.2.3"))
    assert spool.instance_count("1.2.3.4") == 3 and spool.has_instance(replace(HEADER, sop_instance_uid="1.2.3.4.2"))
    assert spool.instance_count("9.9") == 0 and not spool.has_instance(replace(HEADER, sop_instance_uid="1.2.3.4.7"))
    again = Spool(tmp_path / "spool")                 # a restart reads the counts from the folder
    assert again.instance_count("1.2.3.4") == 3
    assert again.store(b"metax", InstanceHeader(HEADER.sop_class_uid, "1.2.3.4.1", "1.2.3.4", "1.2.3")) \
        is StoreOutcome.DUPLICATE
    for path in again.instance_paths("1.2.3.4"):      # a folder removed behind the spool's back
        path.unlink()
    (again.incoming / "1.2.3.4").rmdir()
    assert again.store(b"new", HEADER) is StoreOutcome.STORED
    assert [p.read_bytes() for p in again.instance_paths("1.2.3.4")] == [b"new"]
    again.forget("1.2.3.4")
    assert again.instance_count("1.2.3.4") == 1


def test_free_space_is_reread_after_enough_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock and statvfs are the test's: a re-read shows as a new statvfs value, and the
    cached value minus what was stored since is what the spool reports in between."""
    from ct2mri_node.receive import members as members_module

    clock = [1000.0]
    disk = {"free": 10 << 30, "reads": 0}

    def disk_usage(path: object) -> SimpleNamespace:
        disk["reads"] += 1
        return SimpleNamespace(total=20 << 30, used=(20 << 30) - disk["free"], free=disk["free"])

    monkeypatch.setattr(members_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(members_module, "shutil", SimpleNamespace(disk_usage=disk_usage))
    monkeypatch.setattr(members_module, "FREE_SPACE_MAX_WRITTEN", 10_000)
    monkeypatch.setattr(members_module, "FREE_SPACE_MAX_AGE_S", 5.0)
    spool = Spool(tmp_path / "spool")
    spool.create()

    def header(n: int) -> InstanceHeader:
        return InstanceHeader(HEADER.sop_class_uid, f"1.2.3.4.{n}", "1.2.3.4", "1.2.3")

    assert spool.free_bytes() == 10 << 30 and disk["reads"] == 1
    disk["free"] = 7 << 30                      # another process fills the disk: not seen yet
    spool.store(b"x" * 4096, header(10))
    assert spool.free_bytes() == (10 << 30) - 4096 and disk["reads"] == 1   # cached minus stored
    spool.store(b"y" * 6000, header(11))        # 10096 bytes since the read: over the threshold
    assert spool.free_bytes() == 7 << 30 and disk["reads"] == 2             # read again, same instant
    disk["free"] = 6 << 30
    clock[0] += 4.9                             # younger than the age limit, little written
    assert spool.free_bytes() == 7 << 30 and disk["reads"] == 2
    clock[0] += 0.2                             # older than the age limit: read again
    assert spool.free_bytes() == 6 << 30 and disk["reads"] == 3


class _Recorder:
    """A spool listener that keeps what it was told (the protocol ops/metrics.py implements)."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def instance_stored(self, outcome: StoreOutcome, nbytes: int) -> None:
        self.events.append(("stored", outcome, nbytes))

    def store_failed(self, error: SpoolError) -> None:
        self.events.append(("failed", type(error).__name__))

    def folder_removed(self, kind: str) -> None:
        self.events.append(("removed", kind))


class _Broken:
    def instance_stored(self, outcome: StoreOutcome, nbytes: int) -> None:
        raise RuntimeError("an observer bug")


def test_listeners_hear_stores_failures_and_removals(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    recorder = _Recorder()
    spool.listeners += [_Broken(), recorder]     # a failing listener neither fails the store nor hides it
    assert spool.store(b"abc", HEADER) is StoreOutcome.STORED
    assert spool.store(b"abc", HEADER) is StoreOutcome.DUPLICATE
    assert spool.store(b"abcd", HEADER) is StoreOutcome.REPLACED
    assert spool.remove_series(HEADER.series_uid)
    other = InstanceHeader(HEADER.sop_class_uid, "1.2.3.9.1", "1.2.3.9", "1.2.3")
    (spool.incoming / "1.2.3.9").write_bytes(b"a file where the series folder belongs")
    with pytest.raises(SpoolError):
        spool.store(b"abc", other)
    assert recorder.events == [
        ("stored", StoreOutcome.STORED, 3), ("stored", StoreOutcome.DUPLICATE, 0),
        ("stored", StoreOutcome.REPLACED, 4), ("removed", "input"), ("failed", "SpoolError"),
    ]


def test_job_store_listeners_hear_completion_timings_and_deliveries(store_at: str | Path) -> None:
    store = JobStore(store_at)
    heard: list[tuple[object, ...]] = []

    class Listener:
        def series_completed(self) -> None:
            heard.append(("completed",))

        def timings_recorded(self, job_id: int, timings: dict[str, float]) -> None:
            heard.append(("timings", job_id, dict(timings)))

        def delivery_recorded(self, job_id: int, destination: str, state: str) -> None:
            heard.append(("delivery", job_id, destination, state))

    store.listeners.append(Listener())
    store.series_complete("1.2.3.4", "1.2.3", 0.0)
    job_id = store.list()[0].id
    store.record_timing(job_id, "translation", 1.5)
    store.record_delivery(job_id, "archive", "done")
    assert heard == [("completed",), ("timings", job_id, {"translation": 1.5}), ("delivery", job_id, "archive", "done")]


def test_read_header_of_a_real_file(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path / "ct", slices=2, size=8)
    header = read_header(paths[0])
    assert is_valid_uid(header.series_uid) and is_valid_uid(header.study_uid)
    with pytest.raises(SpoolError, match="unreadable"):
        read_header(tmp_path / "ct" / "missing.dcm")


def test_completion_waits_for_release_and_quiet_period() -> None:
    now = [0.0]
    sink = RecordingSink()
    watcher = CompletionWatcher(sink, quiet_period_s=2.0, clock=lambda: now[0], open_association_quiet_s=60)
    watcher.instance_received("1.1", "1", association=1)
    watcher.instance_received("1.1", "1", association=2)   # second association, same series
    now[0] = 10.0
    assert watcher.check() == []                           # both still open
    watcher.association_closed(1)
    assert watcher.check() == []                           # association 2 still open
    watcher.association_closed(2)
    now[0] = 10.5
    watcher.instance_received("1.1", "1", association=None)  # a late instance restarts the wait
    now[0] = 12.0
    assert watcher.check() == []
    now[0] = 12.6
    assert watcher.check() == ["1.1"]
    assert watcher.check() == []
    assert sink.received == ["1.1"] and sink.complete == ["1.1"]


def test_job_store_lifecycle(store_at: str | Path) -> None:
    store = JobStore(store_at)
    store.series_received("1.2", "1")
    store.series_received("1.2", "1")
    store.series_complete("1.2", "1", 123.0)
    store.series_complete("1.2", "1", 124.0)   # still open: same job
    (job,) = store.list()
    assert job.state == "queued" and job.last_instance_at == 124.0
    claimed = store.claim()
    assert claimed is not None and claimed.state == "translating" and claimed.attempts == 1
    assert store.claim() is None
    store.record_timing(job.id, "translation", 1.5)
    store.record_delivery(job.id, "archive", "pending", "down")
    store.defer(job.id, 60, "down")
    assert store.claim() is None                # not due yet
    store.fail(job.id, "gave up")
    failed = store.get(job.id)
    assert failed.state == "failed" and failed.reason == "gave up"
    assert failed.timings == {"translation": 1.5}
    assert failed.deliveries[0].reason == "down"
    again = store.retry(job.id)
    assert again.state == "queued" and again.attempts == 0
    with pytest.raises(JobError, match="only failed"):
        store.retry(job.id)
    with pytest.raises(JobError, match="no job 99"):
        store.get(99)
    # a series arriving again after its job started gets a new job, and the started one is
    # superseded: the change must be translated, the old MR sent nowhere more (issue 21)
    assert store.claim() is not None
    store.series_received("1.2", "1")
    assert [j.state for j in store.list()] == ["superseded", "received"]


def test_a_change_after_the_job_took_its_input_supersedes_it(store_at: str | Path) -> None:
    """Deferred (retrying a send), translating and sending jobs are superseded by the series'
    change; a job that has not started takes the change itself; finished jobs are left alone."""
    store = JobStore(store_at)
    # deferred: translated, one destination confirmed, the other retrying
    deferred = store.enqueue("1.1", "1")
    assert store.claim() is not None
    store.mark_translated(deferred)
    store.record_delivery(deferred, "up", "done")
    store.record_delivery(deferred, "down", "pending", "refused")
    assert store.defer(deferred, 0, "down is down")
    assert store.series_received("1.1", "1") == [deferred]       # the changed instance arrives
    old = store.get(deferred)
    assert old.state == "superseded" and "superseded by job" in (old.reason or "")
    assert {d.destination: d.state for d in old.deliveries} == {"up": "done", "down": "superseded"}
    # nothing the old job's worker does brings it back or re-opens the delivery
    assert not store.defer(deferred, 0, "down is down") and not store.complete(deferred)
    assert not store.fail(deferred, "x") and not store.set_state(deferred, "sending")
    store.record_delivery(deferred, "down", "pending", "still down")
    assert {d.destination: d.state for d in store.get(deferred).deliveries}["down"] == "superseded"
    assert store.is_superseded(deferred)
    with pytest.raises(JobError, match="superseded"):
        store.retry(deferred)
    newer = store.series_complete("1.1", "1", 1.0)
    assert newer != deferred and store.get(newer).state == "queued"
    claimed = store.claim()
    assert claimed is not None and claimed.id == newer        # never the superseded one

    # translating and sending: superseded when the series completes again (no received step)
    for state in ("translating", "sending"):
        uid = f"1.{state}"
        job = store.enqueue(uid, "1")
        assert store.claim() is not None and store.set_state(job, state)
        again = store.enqueue(uid, "1")
        assert again != job and store.get(job).state == "superseded" and store.get(again).state == "queued"
        assert store.claim() is not None and store.complete(again)   # out of the next round's way

    # not started: the same job takes the change; finished: left alone
    waiting = store.enqueue("1.4", "1")
    assert store.series_received("1.4", "1") == [] and store.enqueue("1.4", "1") == waiting
    assert store.claim() is not None   # 1.4's job, started: now a change supersedes it
    done = store.enqueue("1.5", "1")
    assert store.claim() is not None and store.complete(done)
    assert store.series_received("1.5", "1") == [] and store.get(done).state == "done"
    counts, _ = store.state_counts()
    assert counts["superseded"] == 3 and counts["done"] == 3
    # a series with a received job is watched again after a restart, whatever its older jobs
    assert "1.5" not in store.series_with_jobs() and "1.translating" in store.series_with_jobs()


def test_claim_is_atomic_across_threads(store_at: str | Path) -> None:
    store = JobStore(store_at)
    for i in range(10):
        store.enqueue(f"1.{i}", "1")
    claimed: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        local = JobStore(store_at)
        while (job := local.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 11))


def test_recover_requeues_interrupted_jobs(store_at: str | Path) -> None:
    store = JobStore(store_at)
    store.enqueue("1.1", "1")
    job = store.claim()
    assert job is not None
    store.set_state(job.id, "sending")
    reopened = JobStore(store_at)
    assert reopened.recover() == 1
    assert reopened.get(job.id).state == "queued"
    assert reopened.series_with_jobs() == {"1.1"}
