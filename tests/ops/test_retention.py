"""Spool retention: the decision, sweeps on a real spool and job store, crash leftovers, re-sends
of purged series, the receiver lock, the `purge` command and the retention metrics."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from nodekit import CLI, free_port, http_get, make_ct_series, node_config, samples, send, wait_for, write_config_file
from relkit import Serve

from ct2mri_node.config import RetentionSettings
from ct2mri_node.errors import ConfigError, JobError
from ct2mri_node.jobs.outputs import output_dir
from ct2mri_node.jobs.store import JobStore, PurgeCandidate
from ct2mri_node.model.translator import Translator
from ct2mri_node.node import Node
from ct2mri_node.ops.retention import Removal, plan, sweep
from ct2mri_node.receive.spool import InstanceHeader, Spool, StoreOutcome

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.3"
HOUR = 3600.0


def row(job_id: int, series: str, state: str, finished_hours_ago: float | None, now: float) -> PurgeCandidate:
    finished = None if finished_hours_ago is None else now - finished_hours_ago * HOUR
    return PurgeCandidate(job_id, series, state, finished)


# -- the decision ---------------------------------------------------------------------------------
def test_plan_removes_only_series_whose_every_job_is_finished_and_due() -> None:
    now = 1_000_000.0
    rows = [
        row(1, "1.1", "done", 200, now),       # done and old: removed
        row(2, "1.2", "done", 2, now),         # done but recent: kept
        row(3, "1.3", "failed", 900, now),     # failed: kept by default
        row(4, "1.4", "done", 300, now),       # old, but its series has a newer open job
        row(5, "1.4", "queued", None, now),
    ]
    assert plan(rows, now, RetentionSettings()) == [Removal("1.1", {1: now - 200 * HOUR})]
    with_failed = RetentionSettings(failed_hours=720)
    assert [r.series_uid for r in plan(rows, now, with_failed)] == ["1.1", "1.3"]
    assert plan(rows, now, RetentionSettings(delivered_hours=None)) == []
    newer_translating = [row(6, "1.5", "done", 500, now), row(7, "1.5", "translating", None, now)]
    assert plan(newer_translating, now, RetentionSettings(failed_hours=1)) == []


# -- a sweep on a real spool ----------------------------------------------------------------------
def header(series: str, n: int) -> InstanceHeader:
    return InstanceHeader(CT, f"{series}.{n}", series, STUDY)


def spool_series(spool: Spool, series: str, count: int = 3) -> None:
    for n in range(1, count + 1):
        assert spool.store(b"DICM" + bytes([n]), header(series, n)) is StoreOutcome.STORED


def finished_job(store: JobStore, spool: Spool, series: str, state: str = "done") -> int:
    """A job that went through the queue to ``state``, with its CT and an MR output folder."""
    spool_series(spool, series)
    store.series_received(series, STUDY)
    job_id = store.enqueue(series, STUDY)
    claimed = store.claim()
    assert claimed is not None and claimed.id == job_id
    if state == "done":
        store.complete(job_id)
    else:
        store.fail(job_id, "missing_slices: slice 4 of 12 is missing")
    out = output_dir(spool, job_id)
    out.mkdir(parents=True)
    (out / "MR00001_1.2.dcm").write_bytes(b"mr")
    (spool.output / f"{job_id}.preview.png").write_bytes(b"png")
    return job_id


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.create()
    return spool


def test_sweep_removes_due_folders_marks_purged_and_leaves_the_rest(spool: Spool) -> None:
    store = JobStore(spool.db_path)
    done = finished_job(store, spool, "2.1")
    failed = finished_job(store, spool, "2.2", state="failed")
    spool_series(spool, "2.3")                       # being received: no finished job
    store.series_received("2.3", STUDY)
    later = time.time() + 200 * HOUR
    settings = RetentionSettings()

    dry = sweep(store, spool, settings, dry_run=True, now=later)
    assert [r.series_uid for r in dry.removed] == ["2.1"] and spool.series_uids() == ["2.1", "2.2", "2.3"]

    report = sweep(store, spool, settings, now=later, recent_store_s=0)
    assert [r.series_uid for r in report.removed] == ["2.1"]
    assert spool.series_uids() == ["2.2", "2.3"]
    assert not output_dir(spool, done).exists() and not (spool.output / f"{done}.preview.png").exists()
    assert output_dir(spool, failed).is_dir()
    assert store.get(done).purged_at is not None and store.get(failed).purged_at is None
    assert store.get(done).as_dict()["purged_at"] == store.get(done).purged_at
    assert store.get(done).state == "done"          # the record stays
    assert not list(spool.incoming.glob(".purge-*")) and spool.instance_count("2.1") == 0
    assert sweep(store, spool, settings, now=later, recent_store_s=0).removed == []      # nothing twice

    with pytest.raises(JobError, match=r"removed by retention at .* send series 2\.1 again"):
        store.retry(done)
    assert store.retry(failed).state == "queued"    # failed jobs stay retryable


def test_pending_series_and_recent_stores_are_kept(spool: Spool) -> None:
    store = JobStore(spool.db_path)
    job = finished_job(store, spool, "3.1")
    later = time.time() + 200 * HOUR
    assert sweep(store, spool, RetentionSettings(), pending=lambda: ["3.1"], now=later,
                 recent_store_s=0).skipped == ["3.1"]
    assert sweep(store, spool, RetentionSettings(), now=later).skipped == ["3.1"]   # stored just now
    assert spool.series_uids() == ["3.1"] and store.get(job).purged_at is None
    # stored into within the last minute (a re-send in progress): kept too
    assert not spool.remove_series("3.1", unless_stored_since=time.monotonic() - 60)
    assert spool.series_uids() == ["3.1"] and spool.instance_count("3.1") == 3


def test_crash_between_rename_and_delete_is_cleaned_at_start(spool: Spool) -> None:
    hidden = spool.incoming / ".purge-4.1-0a1b2c3d"
    hidden.mkdir()
    (hidden / "4.1.1.dcm").write_bytes(b"DICM")
    (spool.output / ".purge-7-deadbeef").mkdir()
    assert spool.series_uids() == []
    assert spool.remove_leftovers() == 2
    assert not list(spool.incoming.iterdir()) and not list(spool.output.iterdir())


def test_old_database_gains_purged_at(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL,"
                     " study_uid TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,"
                     " updated_at REAL NOT NULL, last_instance_at REAL, queued_at REAL, started_at REAL,"
                     " finished_at REAL, not_before REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
                     " translated INTEGER NOT NULL DEFAULT 0, reason TEXT, timings TEXT NOT NULL DEFAULT '{}')")
        conn.execute("INSERT INTO jobs (series_uid, study_uid, state, created_at, updated_at, finished_at)"
                     " VALUES ('5.1', '1.2.3', 'done', 1, 1, 1)")
    store = JobStore(db)
    assert store.get(1).purged_at is None
    assert store.mark_purged({1: 1.0}, purged_at=2.0) and store.get(1).purged_at == 2.0
    assert JobStore(db).get(1).purged_at == 2.0     # opening again: no second ALTER


def test_receiver_lock_is_exclusive(spool: Spool) -> None:
    lock = spool.lock_receiver()
    with pytest.raises(ConfigError, match="another ct2mri-node is receiving into the spool"):
        Spool(spool.root).lock_receiver()
    lock.release()
    Spool(spool.root).lock_receiver().release()


def test_removal_never_loses_an_instance_stored_after_it(spool: Spool) -> None:
    """4 threads store one series while it is removed 3 times: what was stored after the last
    removal is all on disk, and the membership cache matches the folder."""
    series, after_removals = "6.1", 10
    removals_done = threading.Event()
    after: list[str] = []
    lock = threading.Lock()

    def sender(t: int) -> None:
        n, extra = 0, 0
        while extra < after_removals:
            began_after = removals_done.is_set()
            extra += began_after
            n += 1
            h = header(series, t * 100_000 + n)
            outcome = spool.store(b"DICM" + h.sop_instance_uid.encode(), h)
            if began_after and outcome is StoreOutcome.STORED:
                with lock:
                    after.append(h.sop_instance_uid)

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        wait_for(lambda: spool.instance_count(series) >= 8, timeout_s=30)
        assert spool.remove_series(series)
    removals_done.set()
    for thread in threads:
        thread.join()
    on_disk = {p.stem for p in (spool.incoming / series).glob("*.dcm")}
    assert len(after) == 4 * after_removals and set(after) <= on_disk
    assert spool.instance_count(series) == len(on_disk)
    assert not list(spool.incoming.glob(".purge-*"))


# -- a running node -------------------------------------------------------------------------------
def test_node_resend_after_purge_is_a_new_job_with_metrics(
    start_node: object, translator: Translator, tmp_path: Path
) -> None:
    config = node_config(tmp_path, destinations=[{"name": "local", "type": "folder", "path": "outbox"}],
                         ops={"http_port": 0})
    node = start_node(config)  # type: ignore[operator]
    assert node.store is not None and node.health is not None and node.watcher is not None
    with pytest.raises(ConfigError, match="another ct2mri-node is receiving"):
        Node(config, translator=translator).start()    # a second receiver on the same spool
    ct = make_ct_series(tmp_path / "ct", seed=21)
    send(node.port, ct)
    first = wait_for(lambda: [j for j in node.store.list() if j.state == "done"])[0]

    report = sweep(node.store, node.spool, config.retention, node.watcher.pending, now=time.time() + 200 * HOUR,
                   recent_store_s=0)
    assert [r.series_uid for r in report.removed] == [first.series_uid]
    assert node.spool.series_uids() == [] and not output_dir(node.spool, first.id).exists()

    send(node.port, ct)                                # the same series again: STORED, a new job
    jobs = wait_for(lambda: [j for j in node.store.list() if j.state == "done"][1:] and node.store.list())
    assert [j.id for j in jobs] == [first.id, first.id + 1] and jobs[0].purged_at is not None
    assert output_dir(node.spool, first.id + 1).is_dir()
    metrics = samples(http_get(node.health.port, "/metrics")[1].decode())
    assert metrics[("ct2mri_instances_received_total", (("outcome", "stored"),))] == 2 * len(ct)
    assert metrics[("ct2mri_spool_purged_total", (("kind", "input"),))] == 1
    assert metrics[("ct2mri_spool_purged_total", (("kind", "output"),))] == 1
    assert metrics[("ct2mri_spool_free_bytes", ())] > 0


# -- the purge command ----------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_purge_command_dry_run_purge_and_refusal_beside_a_node(tiny_checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config_file(
        tmp_path,
        node={"ae_title": "CT2MRI", "port": port, "bind_address": "127.0.0.1"},
        destinations=[{"name": "local", "type": "folder", "path": "outbox"}],
        model={"checkpoint": str(tiny_checkpoint), "device": "cpu", "steps": 2},
        retention={"delivered_hours": 0.0001},      # 0.36 s
        series={}, worker={},                       # the schema's defaults
    )
    spool = Spool(tmp_path / "spool")
    spool.create()
    store = JobStore(spool.db_path)
    done = finished_job(store, spool, "8.1")
    finished_job(store, spool, "8.2", state="failed")
    time.sleep(0.5)

    dry = run_cli("purge", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    assert f"would remove series 8.1 (job {done})" in dry.stdout and spool.series_uids() == ["8.1", "8.2"]
    real = run_cli("purge", "--config", str(config))
    assert real.returncode == 0, real.stderr
    assert f"removed series 8.1 (job {done})" in real.stdout and spool.series_uids() == ["8.2"]
    status = run_cli("status", "--json", "--config", str(config))
    assert [j["purged_at"] is not None for j in yaml.safe_load(status.stdout)] == [True, False]
    text = run_cli("status", "--config", str(config)).stdout
    assert text.count("files removed by retention at") == 1

    serve = Serve(config, tmp_path / "serve.log")
    try:
        serve.wait_listening()
        refused = run_cli("purge", "--config", str(config))
        assert refused.returncode != 0
        assert "purges by itself every 600 s" in refused.stderr
    finally:
        assert serve.stop() == 0
