"""How queued jobs reach workers: the in-process backend and the leases that let many worker
processes share one job store.

The job store (``jobs.sqlite3`` in the spool, or the PostgreSQL server of ``job_store.url``,
:mod:`ct2mri_node.jobs.store`) stays the single source of truth. This module adds one table
beside its tables, ``job_dispatch``, with per job:

* ``priority``: ``urgent`` or ``routine`` (chosen by the ``queue.urgent`` rules of the config);
* ``published_at``: when the job id was last handed to the broker;
* ``owner`` and ``lease_until``: which worker runs the job, and until when it counts as alive.

A worker claims a job by one transaction: a queued, due job, or a job whose owner's lease has
lapsed (the owner died). On SQLite the transaction locks the database; on PostgreSQL it locks only
the job's row (``SELECT ... FOR UPDATE OF j SKIP LOCKED``: concurrent claims take different jobs
instead of waiting), and a takeover's lease is written only if the lease is still lapsed then.
While it runs the job it renews the lease; a re-delivered task for a
job another live worker holds, or a job that is finished, claims nothing and is a no-op. The
:class:`Publisher` re-publishes what the broker may have lost: queued jobs never published,
published before they were (re-)queued or deferred, or published long ago and still not claimed,
and jobs whose owner's lease lapsed. Duplicates are harmless: claims are transactional and
output UIDs deterministic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ContextManager, Protocol

from ..config import QueueSettings, UrgentRule
from ..errors import SpoolError
from .store import Job, JobStore

log = logging.getLogger(__name__)

PRIORITIES = ("urgent", "routine")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_dispatch (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    priority TEXT NOT NULL DEFAULT 'routine',
    published_at REAL,
    owner TEXT,
    lease_until REAL
);
"""


def priority_for(rules: Sequence[UrgentRule], calling_ae: str | None, series_description: str | None) -> str:
    """``urgent`` when any rule matches (all of a rule's set fields must match), else ``routine``."""
    for rule in rules:
        if rule.calling_ae is not None and rule.calling_ae != (calling_ae or "").strip():
            continue
        if rule.series_description is not None and not re.search(
            rule.series_description, series_description or "", re.IGNORECASE
        ):
            continue
        return "urgent"
    return "routine"


def worker_identity(device: str) -> str:
    """``host:pid:device:random``: names a lease's owner and advertises the device it runs on."""
    return f"{socket.gethostname()}:{os.getpid()}:{device}:{uuid.uuid4().hex[:8]}"


class ClaimSource(Protocol):
    """Where a worker gets its next job, and what it holds while running it."""

    def claim(self) -> Job | None: ...
    def holding(self, job: Job) -> ContextManager[object]: ...


class LocalClaims:
    """The in-process backend (the embedded default): the job store is the whole queue."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def claim(self) -> Job | None:
        """The oldest due queued job (see :meth:`JobStore.claim`)."""
        return self.store.claim()

    def holding(self, job: Job) -> ContextManager[object]:
        """Nothing to hold: one process owns every job; ``recover()`` requeues after a crash."""
        return contextlib.nullcontext()


class JobDispatch:
    """The ``job_dispatch`` table: priorities, publications and leases (shared by all roles)."""

    def __init__(self, store: JobStore, lease_s: float = 60.0, owner: str | None = None) -> None:
        self.store = store
        self.lease_s = float(lease_s)
        self.owner = owner or worker_identity("none")
        try:
            self.store.db.ensure_schema(_SCHEMA)
        except (sqlite3.Error, SpoolError) as exc:
            raise SpoolError(f"cannot prepare the dispatch table in {store.path}: {exc}") from exc

    # -- priorities ---------------------------------------------------------------------
    def set_priority(self, series_uid: str, priority: str) -> int | None:
        """Record the priority of the series' open (received or queued) job; its id, None if none."""
        with self.store.transaction() as conn:
            job_id = self.store.open_job_id(conn, series_uid)
            if job_id is None:
                return None
            conn.execute(
                "INSERT INTO job_dispatch (job_id, priority) VALUES (?, ?)"
                " ON CONFLICT(job_id) DO UPDATE SET priority=excluded.priority",
                (job_id, priority),
            )
        return job_id

    # -- publishing ---------------------------------------------------------------------
    def due_for_publish(self, republish_after_s: float, now: float | None = None) -> list[tuple[int, str]]:
        """(job id, priority) of every job the broker should carry now but may not."""
        now = time.time() if now is None else now
        stale = now - republish_after_s
        with self.store.connect() as conn:
            rows = conn.execute(
                "SELECT j.id, COALESCE(d.priority, 'routine') AS priority FROM jobs j"
                " LEFT JOIN job_dispatch d ON d.job_id = j.id WHERE"
                " (j.state='queued' AND j.not_before<=? AND (d.published_at IS NULL"
                "   OR d.published_at < COALESCE(j.queued_at, 0) OR d.published_at < j.not_before OR d.published_at < ?))"
                " OR (j.state IN ('translating','sending') AND " + self._lapsed_sql("j", "d") +
                "   AND (d.published_at IS NULL OR d.published_at < d.lease_until OR d.published_at < ?))"
                " ORDER BY j.id",
                (now, stale, now, now - self.lease_s, stale),
            ).fetchall()
        return [(int(r["id"]), str(r["priority"])) for r in rows]

    def mark_published(self, job_id: int, now: float | None = None) -> None:
        """The broker has the job id (as of ``now``)."""
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO job_dispatch (job_id, published_at) VALUES (?, ?)"
                " ON CONFLICT(job_id) DO UPDATE SET published_at=excluded.published_at",
                (job_id, time.time() if now is None else now),
            )

    # -- claims and leases --------------------------------------------------------------
    @staticmethod
    def _lapsed_sql(jobs: str, dispatch: str) -> str:
        """SQL: the in-flight job's owner is presumed dead (its lease lapsed, or it never had one).

        Parameters: now, then now - lease_s (a job claimed without lease must be that quiet)."""
        return (f"(({dispatch}.lease_until IS NOT NULL AND {dispatch}.lease_until < ?)"
                f" OR ({dispatch}.lease_until IS NULL AND {jobs}.updated_at < ?))")

    def claim(self, job_id: int | None = None) -> Job | None:
        """Take job ``job_id`` (or the oldest claimable one) if it is claimable; None otherwise.

        Claimable: queued and due, or in flight under a lapsed lease. Claiming moves it to
        ``translating``, counts an attempt and gives this worker the lease.
        """
        now = time.time()
        where = ("(j.state='queued' AND j.not_before<=?) OR (j.state IN ('translating','sending') AND "
                 + self._lapsed_sql("j", "d") + ")")
        params: list[object] = [now, now, now - self.lease_s]
        query = f"SELECT j.id, j.state FROM jobs j LEFT JOIN job_dispatch d ON d.job_id=j.id WHERE ({where})"  # noqa: S608
        if job_id is not None:
            query += " AND j.id=?"
            params.append(job_id)
        query += " ORDER BY COALESCE(d.priority, 'routine') = 'routine', j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
        with self.store.transaction(serial=False) as conn:
            row = conn.execute(query, params).fetchone()
            if row is None:
                return None
            claimed = int(row["id"])
            queued = row["state"] == "queued"
            taken = conn.execute(   # a takeover only while the lease is still lapsed (PostgreSQL: not re-read)
                "INSERT INTO job_dispatch (job_id, owner, lease_until) VALUES (?, ?, ?)"
                " ON CONFLICT(job_id) DO UPDATE SET owner=excluded.owner, lease_until=excluded.lease_until"
                " WHERE ? OR job_dispatch.lease_until IS NULL OR job_dispatch.lease_until < ?",
                (claimed, self.owner, now + self.lease_s, queued, now),
            )
            if taken.rowcount != 1:
                return None
            if not queued:
                log.warning("job %d: its worker stopped renewing its lease; taking it over", claimed)
            self.store.start_attempt(conn, claimed, now)
        return self.store.get(claimed)

    def renew(self, job_id: int) -> bool:
        """Extend this worker's lease on ``job_id``; False when another worker took it over."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE job_dispatch SET lease_until=? WHERE job_id=? AND owner=?",
                (time.time() + self.lease_s, job_id, self.owner),
            )
        return cur.rowcount == 1

    def release(self, job_id: int) -> None:
        """Give up the lease (the job is done, failed or deferred: its state says which)."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE job_dispatch SET owner=NULL, lease_until=NULL WHERE job_id=? AND owner=?",
                (job_id, self.owner),
            )

    def lease(self, job_id: int) -> tuple[str | None, float | None, str]:
        """(owner, lease_until, priority) of a job (for status and tests)."""
        with self.store.connect() as conn:
            row = conn.execute(
                "SELECT owner, lease_until, priority FROM job_dispatch WHERE job_id=?", (job_id,)
            ).fetchone()
        if row is None:
            return None, None, "routine"
        return row["owner"], row["lease_until"], str(row["priority"])


class LeasedClaims:
    """A :class:`ClaimSource` for worker processes that share one job store."""

    def __init__(self, dispatch: JobDispatch) -> None:
        self.dispatch = dispatch

    def claim(self) -> Job | None:
        """The most urgent, oldest claimable job."""
        return self.dispatch.claim()

    @contextmanager
    def holding(self, job: Job) -> Iterator[object]:
        """Renew the lease every third of its length while the job runs; release it after."""
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job.id, stop), name=f"ct2mri-lease-{job.id}",
                                daemon=True)
        beat.start()
        try:
            yield None
        finally:
            stop.set()
            beat.join()
            self.dispatch.release(job.id)

    def _heartbeat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.dispatch.lease_s / 3):
            try:
                if not self.dispatch.renew(job_id):
                    log.warning("job %d: lease lost to another worker (this one was presumed dead)", job_id)
                    return
            except (sqlite3.Error, SpoolError) as exc:
                log.warning("job %d: cannot renew the lease: %s", job_id, exc)


class Publisher:
    """Background thread that hands due job ids to the broker (``send(job_id, priority)``)."""

    def __init__(self, dispatch: JobDispatch, send: Callable[[int, str], None], settings: QueueSettings) -> None:
        self.dispatch = dispatch
        self.send = send
        self.settings = settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """A job was queued: publish now instead of at the next sweep."""
        self._wake.set()

    def sweep(self) -> int:
        """Publish every job that is due for publishing; returns how many were published."""
        published = 0
        for job_id, priority in self.dispatch.due_for_publish(self.settings.republish_after_s):
            try:
                self.send(job_id, priority)
            except Exception as exc:  # noqa: BLE001 (kombu raises many types; the next sweep retries)
                log.warning("cannot publish job %d to the broker (%s); retrying in %.1f s",
                            job_id, exc, self.settings.sweep_interval_s)
                return published
            self.dispatch.mark_published(job_id)
            log.info("job %d published to the %s queue", job_id, priority)
            published += 1
        return published

    def start(self) -> None:
        """Sweep at start, then on every wake-up and every ``sweep_interval_s``."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ct2mri-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping (whatever is unpublished stays queued in the job store)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # a locked database or a bug must not end publishing
                log.exception("publisher: sweep failed; trying again")
            self._wake.wait(self.settings.sweep_interval_s)
            self._wake.clear()

