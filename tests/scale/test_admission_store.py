"""The job store's side of admission (issue 21, part 1) on both backends, SQLite and PostgreSQL:
the ``refused`` state never counts as queued, the queue is counted per calling AE, the calling
AE recorded when a series begins is still there at completion, and a version-1 store (a deployed
node before this change) migrates to version 2 with its jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from scalekit import Postgres

from ct2mri_node.jobs.store import _SCHEMA, SCHEMA_VERSION, JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite3"
    server: Postgres = request.getfixturevalue("postgres_server")
    return server.database()


def test_refused_never_queued_and_queue_counted_per_ae(location: str | Path) -> None:
    store = JobStore(location)
    store.series_received("1.1", "1", "SCANNER")
    store.series_received("1.2", "1", "SCANNER")
    store.series_received("1.3", "1", "JUNK")
    assert store.calling_ae_of("1.1") == "SCANNER"
    store.series_complete("1.1", "1", 0.0, None)            # after a restart: AE unknown at completion
    store.series_complete("1.2", "1", 0.0, "SCANNER")
    refused = store.series_refused("1.3", "1", 0.0, "series refused (not_ct): modality MR", None)
    assert (store.queued(), store.queued("SCANNER"), store.queued("JUNK")) == (2, 2, 0)
    job = store.get(refused)
    assert (job.state, job.calling_ae, job.queued_at, job.attempts) == ("refused", "JUNK", None, 0)
    assert job.finished_at is not None and job.reason == "series refused (not_ct): modality MR"
    assert {j.calling_ae for j in store.list()} == {"SCANNER", "JUNK"}
    assert store.state_counts()[0]["refused"] == 1
    assert [c.state for c in store.purge_candidates()] == ["refused"]   # retention keeps it like a failed one
    assert store.retry(refused).state == "queued" and store.queued("JUNK") == 1   # an admin may override


def test_version_1_store_migrates_to_version_2(location: str | Path) -> None:
    first = JobStore(location)   # today's schema; then taken back to what version 1 had
    with first.transaction() as conn:
        conn.execute("DROP INDEX jobs_state_ae")
        conn.execute("ALTER TABLE jobs DROP COLUMN calling_ae")
        conn.execute("UPDATE schema_version SET version=1")
        conn.execute("INSERT INTO jobs (series_uid, study_uid, state, created_at, updated_at)"
                     " VALUES ('1.2', '1', 'queued', 0, 0)")
    store = JobStore(location)
    (job,) = store.list()
    assert (job.state, job.calling_ae) == ("queued", None)
    with store.connect() as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert "calling_ae" in store.db.columns(conn, "jobs")
    assert _SCHEMA.count("calling_ae") == 0   # the column comes from the migration only
