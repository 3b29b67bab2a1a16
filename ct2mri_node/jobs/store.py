"""Durable job records: SQLite (WAL mode) inside the spool, or a PostgreSQL server shared by
several machines (``job_store.url``; :mod:`ct2mri_node.jobs.database` speaks both).

One job per complete series, with its state
(``received -> queued -> translating -> sending -> done | failed``, ``received -> ignored``
when a routing rule leaves the series alone, ``received -> refused`` when the series' headers
show at completion that it can never be translated (a refused job never counts as queued), or
``superseded`` when the series changed after the job took its input),
the calling AE title that sent it, timestamps, attempts, the reason for any failure,
stage timings, the routing decision (rule, action, model, destinations) and one delivery row
per destination.

A job takes its input when a worker first claims it (``started_at``). From then on the job is
no longer *open*: an instance of its series that arrives later (a new one, or one received again
with other content) opens a new job, and every started, unfinished job of the series ends
``superseded`` in the same transaction. A superseded job is never claimed again and its worker
starts no further send (a send already under way finishes: half a series would be worse); the
new job translates the new content into a new MR series (its UIDs come from the new pixels).
:mod:`ct2mri_node.jobs.queue` adds leases and publishing beside these tables for worker processes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import JobError, SpoolError
from .database import Connection, open_database

if TYPE_CHECKING:
    from ..config import NodeConfig

log = logging.getLogger(__name__)

STATES = ("received", "queued", "translating", "sending", "done", "failed", "ignored", "refused", "superseded")
#: What a routing decision does with a series (``route/rules.py``).
ROUTE_ACTIONS = ("translate", "ignore", "refuse")
#: States in which the series may still gain instances and the job has not started (a job in
#: them is open only while ``started_at`` is NULL: a deferred or recovered job has its input).
OPEN_STATES = ("received", "queued")
#: States of a job that still needs its series' spooled CT (retention never removes it then).
ACTIVE_STATES = ("received", "queued", "translating", "sending")
#: States of a job that has taken its input and may still send its MR: what a change supersedes.
SUPERSEDABLE_STATES = ("queued", "translating", "sending")
#: Final states (retention may remove the series once every job of it is in one; ``refused`` is
#: kept as long as ``failed``).
FINISHED_STATES = ("done", "failed", "ignored", "refused", "superseded")

#: The schema version this code writes; see :meth:`JobStore._migrate`.
SCHEMA_VERSION = 2
#: (version, statements) steps after version 1, oldest first (portable SQL for both servers).
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    # 2: the calling AE of each series, for limits.max_queued_jobs_per_ae (and status)
    (2, ("ALTER TABLE jobs ADD COLUMN calling_ae TEXT",
         "CREATE INDEX IF NOT EXISTS jobs_state_ae ON jobs(state, calling_ae)")),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_instance_at REAL,
    queued_at REAL,
    started_at REAL,
    finished_at REAL,
    not_before REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    translated INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    purged_at REAL,
    rule TEXT,
    action TEXT,
    model TEXT,
    destinations TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_uid);
CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs(state, id);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, destination)
);
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS provenance (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    recorded_at REAL NOT NULL,
    data TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Delivery:
    """One destination's result for a job: ``pending``, ``done`` or ``failed``."""

    destination: str
    state: str
    attempts: int
    reason: str | None


@dataclass(frozen=True)
class Job:
    """A snapshot of one job record."""

    id: int
    series_uid: str
    study_uid: str
    state: str
    created_at: float
    updated_at: float
    last_instance_at: float | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    not_before: float
    attempts: int
    translated: bool
    reason: str | None
    timings: dict[str, float] = field(default_factory=dict)
    deliveries: tuple[Delivery, ...] = ()
    purged_at: float | None = None   # when retention removed its CT input and MR output
    rule: str | None = None          # the routing rule that decided the series (None: before routing)
    action: str | None = None        # translate | ignore | refuse
    model: str | None = None         # the named model that translates it (translate only)
    destinations: tuple[str, ...] | None = None   # where its results go; None: every destination
    calling_ae: str | None = None    # AE title that sent the series (None: unknown, e.g. older records)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``status --json``)."""
        return asdict(self)


@dataclass(frozen=True)
class Route:
    """A routing decision as the job store records it (made by ``route/rules.py``)."""

    rule: str
    action: str                                   # one of ROUTE_ACTIONS
    model: str | None = None                      # translate: the named model
    destinations: tuple[str, ...] | None = None   # translate: where results go; None: everywhere
    reason: str | None = None                     # ignore / refuse: why


@dataclass(frozen=True)
class PurgeCandidate:
    """An unpurged job of a series that has a finished job: what retention decides from."""

    id: int
    series_uid: str
    state: str
    finished_at: float | None


class JobListener(Protocol):
    """What the job store tells its observers as records are written (ops/metrics.py implements it)."""

    def series_completed(self) -> None:
        """A complete series got its job (queued, or recorded ignored/refused by a rule)."""

    def timings_recorded(self, job_id: int, timings: Mapping[str, float]) -> None:
        """Stage durations (seconds) were stored for a job."""

    def delivery_recorded(self, job_id: int, destination: str, state: str) -> None:
        """A send attempt's outcome (``done``, ``failed``, ``pending``) was stored."""

    def job_superseded(self, job_id: int) -> None:
        """A job ended ``superseded``: its series changed after it had taken its input."""


class JobStore:
    """The job records and queue (SQLite file or PostgreSQL URL); safe to use from several
    threads and processes, and with PostgreSQL from several machines."""

    def __init__(self, location: Path | str, password: str | None = None, connect_timeout_s: float = 30.0) -> None:
        self.db = open_database(location, password, connect_timeout_s)
        #: The SQLite file, or the server's URL without its password (what messages name).
        self.path: Path | str = self.db.path if self.db.dialect == "sqlite" else self.db.location  # type: ignore[union-attr]
        #: Observers told about completed series, timings and deliveries (:class:`JobListener`).
        self.listeners: list[JobListener] = []
        try:
            self.db.ensure_schema(_SCHEMA)
            self._migrate()
        except (sqlite3.Error, SpoolError) as exc:   # PostgreSQL errors arrive as SpoolError
            raise SpoolError(f"cannot open the job database {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Bring a database made by an older version to :data:`SCHEMA_VERSION` (its history kept).

        Version 1 is today's tables; an unversioned SQLite file (before versioning) gets the
        columns it lacks. Later versions add their steps to :data:`MIGRATIONS`."""
        with self.transaction() as conn:
            row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            version = 0 if row is None or row["v"] is None else int(row["v"])
            if version > SCHEMA_VERSION:
                raise SpoolError(f"the job database {self.path} has schema version {version}, newer than this "
                                 f"ct2mri-node knows ({SCHEMA_VERSION}); upgrade ct2mri-node")
            if version == 0:
                columns = self.db.columns(conn, "jobs")
                for name, kind in (("purged_at", "REAL"), ("rule", "TEXT"), ("action", "TEXT"),
                                   ("model", "TEXT"), ("destinations", "TEXT")):
                    if name not in columns:
                        conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                        log.info("job database %s: added column %s", self.path, name)
                version = 1
            for target, statements in MIGRATIONS:
                if version < target:
                    for statement in statements:
                        conn.execute(statement)
                    version = target
                    log.info("job database %s: migrated to schema version %d", self.path, target)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection to the job database (SQLite: fsync on every commit); closed on exit."""
        return self.db.connect()  # type: ignore[no-any-return]

    def transaction(self, serial: bool = True) -> AbstractContextManager[Connection]:
        """One write transaction, taken before reading so claims are atomic; ``serial=False``
        (claims only) lets PostgreSQL run it beside others, on the rows it locks ``FOR UPDATE``."""
        return self.db.transaction(serial)  # type: ignore[no-any-return]

    # -- completion sink ---------------------------------------------------------------
    def series_received(self, series_uid: str, study_uid: str, calling_ae: str | None = None) -> list[int]:
        """Open a ``received`` job for a series unless one is already open; ``calling_ae`` is kept
        on it (durable, so the sender is still known when the series completes after a restart);
        jobs of the series that had already taken their input end ``superseded`` (their ids are
        returned)."""
        now = time.time()
        with self.transaction() as conn:
            job_id = self._open_or_new_job(conn, series_uid, study_uid, "received", now, calling_ae)
            superseded = self._supersede(conn, series_uid, job_id, now)
        self._report_superseded(superseded, job_id, series_uid)
        return [old for old, _ in superseded]

    def _open_or_new_job(self, conn: Connection, series_uid: str, study_uid: str, state: str, now: float,
                         calling_ae: str | None = None) -> int:
        """Inside the caller's transaction: the series' open job (``calling_ae`` kept on it if it
        has none), or a new one in ``state``; returns its id."""
        job_id = self.open_job_id(conn, series_uid)
        if job_id is None:
            cur = conn.execute(
                "INSERT INTO jobs (series_uid, study_uid, state, created_at, updated_at, calling_ae)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (series_uid, study_uid, state, now, now, calling_ae),
            )
            return int(cur.lastrowid or 0)
        if calling_ae is not None:
            conn.execute("UPDATE jobs SET calling_ae=COALESCE(calling_ae, ?) WHERE id=?", (calling_ae, job_id))
        return job_id

    @staticmethod
    def _supersede(conn: Connection, series_uid: str, newer_id: int, now: float) -> list[tuple[int, str]]:
        """Inside the caller's transaction: every started, unfinished job of the series other than
        ``newer_id`` becomes ``superseded``, and its deliveries not yet confirmed too; returns
        (job id, state it was in)."""
        marks = ",".join("?" * len(SUPERSEDABLE_STATES))
        rows = conn.execute(
            f"SELECT id, state FROM jobs WHERE series_uid=? AND id!=? AND started_at IS NOT NULL"  # noqa: S608
            f" AND state IN ({marks}) ORDER BY id FOR UPDATE",
            (series_uid, newer_id, *SUPERSEDABLE_STATES),
        ).fetchall()
        for row in rows:
            reason = (f"superseded by job {newer_id}: the series changed (an instance added, or received "
                      f"again with other content) while this job was {row['state']}; its MR goes to no "
                      "destination that had not confirmed it")
            conn.execute("UPDATE jobs SET state='superseded', finished_at=?, updated_at=?, reason=? WHERE id=?",
                         (now, now, reason, row["id"]))
            conn.execute("UPDATE deliveries SET state='superseded', updated_at=? WHERE job_id=? AND state!='done'",
                         (now, row["id"]))
        return [(int(r["id"]), str(r["state"])) for r in rows]

    def _report_superseded(self, superseded: list[tuple[int, str]], newer_id: int, series_uid: str) -> None:
        for old, state in superseded:
            log.info("job %d superseded by job %d: series %s changed while the job was %s",
                     old, newer_id, series_uid, state)
            self._notify("job_superseded", old)

    def series_complete(
        self, series_uid: str, study_uid: str, last_instance_at: float, calling_ae: str | None = None,
        route: Route | None = None,
    ) -> int:
        """The series is complete: queue its open job (creating one if needed), or, as ``route``
        says, record it ignored or refused; returns the job id."""
        job_id = self.enqueue(series_uid, study_uid, last_instance_at, route, calling_ae)
        state = "queued" if route is None or route.action == "translate" else route.action
        log.info("job %d for series %s: %s", job_id, series_uid,
                 state if route is None else f"{state} by rule {route.rule!r}")
        self._notify("series_completed")
        return job_id

    def series_refused(
        self, series_uid: str, study_uid: str, last_instance_at: float, reason: str, calling_ae: str | None = None,
    ) -> int:
        """The complete series can never be translated: its open job (or a new one) ends ``refused``
        with ``reason``, never having been queued; returns the job id. Its files stay in the spool."""
        now = time.time()
        with self.transaction() as conn:
            job_id = self._open_or_new_job(conn, series_uid, study_uid, "refused", now)
            conn.execute(
                "UPDATE jobs SET state='refused', reason=?, finished_at=?, updated_at=?, last_instance_at=?,"
                " calling_ae=COALESCE(?, calling_ae) WHERE id=?",
                (reason, now, now, last_instance_at, calling_ae, job_id),
            )
        log.info("job %d for series %s: refused (%s)", job_id, series_uid, reason)
        self._notify("series_completed")
        return job_id

    def calling_ae_of(self, series_uid: str) -> str | None:
        """The calling AE recorded on the series' open job (None: no open job, or not recorded)."""
        with self.connect() as conn:
            job_id = self.open_job_id(conn, series_uid)
            if job_id is None:
                return None
            row = conn.execute("SELECT calling_ae FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else row["calling_ae"]

    def queued(self, calling_ae: str | None = None) -> int:
        """Jobs waiting in the translation queue (``queued``), all of them or those ``calling_ae``
        sent: the backlog the SCP's ``limits.max_queued_jobs`` and ``max_queued_jobs_per_ae`` read.
        Received, refused, ignored and finished jobs never count."""
        with self.connect() as conn:
            if calling_ae is None:
                row = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()
            else:
                row = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND calling_ae=?",
                                   (calling_ae,)).fetchone()
        return int(row[0])

    def _notify(self, event: str, *args: Any) -> None:
        """Call ``event`` on every listener; a listener's error is logged, never raised."""
        for listener in self.listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:  # noqa: BLE001 (an observer must never fail a job record)
                log.exception("job store listener %r failed on %s", listener, event)

    # -- the queue -----------------------------------------------------------------------
    def enqueue(
        self, series_uid: str, study_uid: str, last_instance_at: float | None = None,
        route: Route | None = None, calling_ae: str | None = None,
    ) -> int:
        """Queue the series' open job, or a new one; returns the job id (one per open series).
        Started, unfinished jobs of the series end ``superseded`` (see the module docstring).

        With a ``route`` the decision is recorded in the same transaction: ``translate`` queues
        the job, ``ignore`` finishes it as ``ignored`` and ``refuse`` as ``failed`` with the
        rule's reason, so no worker can claim a job that a rule turned away."""
        now = time.time()
        with self.transaction() as conn:
            job_id = self._open_or_new_job(conn, series_uid, study_uid, "queued", now)
            conn.execute(
                "UPDATE jobs SET state='queued', queued_at=?, updated_at=?, last_instance_at=?,"
                " calling_ae=COALESCE(?, calling_ae) WHERE id=?",
                (now, now, last_instance_at, calling_ae, job_id),
            )
            if route is not None:
                self._record_route(conn, job_id, route, now)
            superseded = self._supersede(conn, series_uid, job_id, now)
        self._report_superseded(superseded, job_id, series_uid)
        return job_id

    @staticmethod
    def _record_route(conn: Connection, job_id: int, route: Route, now: float) -> None:
        """Store a routing decision on a job just queued (inside the caller's transaction)."""
        if route.action not in ROUTE_ACTIONS:
            raise JobError(f"unknown routing action {route.action!r}")
        dests = None if route.destinations is None else json.dumps(list(route.destinations))
        conn.execute("UPDATE jobs SET rule=?, action=?, model=?, destinations=? WHERE id=?",
                     (route.rule, route.action, route.model, dests, job_id))
        if route.action == "ignore":
            conn.execute("UPDATE jobs SET state='ignored', finished_at=?, reason=? WHERE id=?",
                         (now, route.reason, job_id))
        elif route.action == "refuse":
            conn.execute("UPDATE jobs SET state='failed', finished_at=?, reason=? WHERE id=?",
                         (now, f"refused by rule {route.rule!r}: {route.reason}", job_id))

    def route(self, job_id: int, route: Route) -> None:
        """Record a routing decision on a job that already exists (a worker routing a job that
        has none); ignore and refuse finish it as :meth:`enqueue` does."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone() is None:
                raise JobError(f"no job {job_id} in {self.path}")
            self._record_route(conn, job_id, route, time.time())

    def mark_ignored_purged(self, job_id: int) -> bool:
        """An ignored job's spooled CT is being removed: mark it purged, unless another job of the
        series is active (its CT is still needed); False then, and the files stay."""
        with self.transaction() as conn:
            row = conn.execute("SELECT series_uid, state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] != "ignored" or self._has_active_job(conn, row["series_uid"]):
                return False
            conn.execute("UPDATE jobs SET purged_at=? WHERE id=?", (time.time(), job_id))
        return True

    def claim(self) -> Job | None:
        """Atomically take the oldest due queued job and mark it ``translating``."""
        now = time.time()
        with self.transaction(serial=False) as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE state='queued' AND not_before<=? ORDER BY id LIMIT 1"
                " FOR UPDATE SKIP LOCKED",
                (now,),
            ).fetchone()
            if row is None:
                return None
            self.start_attempt(conn, int(row["id"]), now)
        return self.get(int(row["id"]))

    def set_state(self, job_id: int, state: str) -> bool:
        """Move a job to ``state`` (one of :data:`STATES`); False when it is ``superseded``
        (a superseded job stays so: its worker must stop, see :meth:`is_superseded`)."""
        if state not in STATES:
            raise JobError(f"unknown job state {state!r}")
        return self._advance(job_id, "state=?", (state,))

    def is_superseded(self, job_id: int) -> bool:
        """Whether the job ended ``superseded`` (its worker checks before each send)."""
        with self.connect() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id} in {self.path}")
        return bool(row["state"] == "superseded")

    def mark_translated(self, job_id: int) -> None:
        """The MR series is written to the job's output folder; sends can retry from it."""
        self._update(job_id, "translated=1", ())

    def record_timing(self, job_id: int, stage: str, seconds: float) -> None:
        """Store one stage's duration in seconds (``status`` and the latency benchmark read them);
        it goes through :meth:`record_timings`, which tells the listeners."""
        self.record_timings(job_id, {stage: seconds})

    def record_timings(self, job_id: int, timings: Mapping[str, float]) -> None:
        """Store several stages' durations in seconds in one transaction (see :meth:`record_timing`)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT timings FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}")
            stored = json.loads(row["timings"])
            for stage, seconds in timings.items():
                stored[stage] = round(float(seconds), 6)
            conn.execute("UPDATE jobs SET timings=? WHERE id=?", (json.dumps(stored), job_id))
        self._notify("timings_recorded", job_id, dict(timings))

    def record_delivery(self, job_id: int, destination: str, state: str, reason: str | None = None) -> None:
        """Record one send attempt's outcome (``done``, ``failed`` or ``pending``) for a destination
        (``superseded``, set when the job is, gives way only to ``done``)."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO deliveries (job_id, destination, state, attempts, reason, updated_at)"
                " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(job_id, destination) DO UPDATE SET"
                " state=excluded.state, attempts=deliveries.attempts+1, reason=excluded.reason,"
                " updated_at=excluded.updated_at"
                # a superseded delivery changes only when a send that was under way confirms it
                " WHERE deliveries.state!='superseded' OR excluded.state='done'",
                (job_id, destination, state, reason, now),
            )
        self._notify("delivery_recorded", job_id, destination, state)

    def record_provenance(self, job_id: int, data: dict[str, Any]) -> None:
        """Store (or replace) the job's provenance record: what made its MR series (JSON-ready)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO provenance (job_id, recorded_at, data) VALUES (?, ?, ?) ON CONFLICT(job_id)"
                " DO UPDATE SET recorded_at=excluded.recorded_at, data=excluded.data",
                (job_id, time.time(), json.dumps(data, sort_keys=True)),
            )

    def provenance(self, job_id: int) -> dict[str, Any] | None:
        """The job's provenance record, or None before its series was translated."""
        with self.connect() as conn:
            row = conn.execute("SELECT data FROM provenance WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else dict(json.loads(row["data"]))

    def state_counts(self) -> tuple[dict[str, int], int]:
        """Jobs per state, and how many queued jobs are due now (the queue depth metrics)."""
        with self.connect() as conn:
            rows = conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
            due = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state='queued' AND not_before<=?", (time.time(),)
            ).fetchone()[0]
        return {r["state"]: int(r["n"]) for r in rows}, int(due)

    def complete(self, job_id: int) -> bool:
        """The job is done: every destination has the series (False: it was superseded meanwhile)."""
        now = time.time()
        return self._advance(job_id, "state='done', finished_at=?, reason=NULL", (now,))

    def fail(self, job_id: int, reason: str) -> bool:
        """The job failed for good, with a reason a person can act on (False: it was superseded)."""
        now = time.time()
        return self._advance(job_id, "state='failed', finished_at=?, reason=?", (now, reason))

    def defer(self, job_id: int, delay_s: float, reason: str) -> bool:
        """Queue the job again, not before ``delay_s`` from now (transient failure); False when
        it was superseded meanwhile (it is never queued again)."""
        due = time.time() + max(0.0, delay_s)
        return self._advance(job_id, "state='queued', not_before=?, reason=?", (due, reason))

    def retry(self, job_id: int) -> Job:
        """Queue a failed, refused (or done) job again now; failed deliveries become pending."""
        job = self.get(job_id)
        if job.purged_at is not None:
            when = datetime.fromtimestamp(job.purged_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise JobError(f"job {job_id} cannot be retried: its input was removed by retention at {when}; "
                           f"send series {job.series_uid} again and it becomes a new job")
        if job.state == "superseded":
            raise JobError(f"job {job_id} is superseded: its series changed after it took its input ({job.reason}); "
                           "the newer job translates the series as it is now")
        if job.state not in ("failed", "done", "ignored", "refused"):
            raise JobError(f"job {job_id} is {job.state}; only failed, refused, done or ignored jobs can be retried")
        now = time.time()
        with self.transaction() as conn:
            if job.action in ("ignore", "refuse"):   # routed again by the worker, by today's rules
                conn.execute("UPDATE jobs SET rule=NULL, action=NULL, model=NULL, destinations=NULL"
                             " WHERE id=?", (job_id,))
            conn.execute(
                "UPDATE jobs SET state='queued', attempts=0, not_before=0, reason=NULL,"
                " finished_at=NULL, queued_at=?, updated_at=? WHERE id=?",
                (now, now, job_id),
            )
            conn.execute(
                "UPDATE deliveries SET state='pending', attempts=0 WHERE job_id=? AND state!='done'",
                (job_id,),
            )
        return self.get(job_id)

    @staticmethod
    def _state_filter(state: str | None) -> tuple[str, tuple[str, ...]]:
        """The WHERE clause and its argument for "jobs in ``state``" (None: every job)."""
        if state is None:
            return "", ()
        if state not in STATES:
            raise JobError(f"unknown job state {state!r}; one of {', '.join(STATES)}")
        return "WHERE state=?", (state,)

    def page(self, offset: int, limit: int, state: str | None = None) -> list[Job]:
        """One page of jobs, newest first, optionally only those in ``state`` (the status page)."""
        where, args = self._state_filter(state)
        with self.connect() as conn:
            rows = conn.execute(f"SELECT id FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
                                (*args, max(0, int(limit)), max(0, int(offset)))).fetchall()
        return [self.get(int(r["id"])) for r in rows]

    def count_jobs(self, state: str | None = None) -> int:
        """How many jobs there are (in ``state`` when given)."""
        where, args = self._state_filter(state)
        with self.connect() as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()  # noqa: S608
        return int(row[0])

    def list(self) -> list[Job]:
        """Every job, oldest first."""
        with self.connect() as conn:
            ids = [int(r["id"]) for r in conn.execute("SELECT id FROM jobs ORDER BY id")]
        return [self.get(i) for i in ids]

    def get(self, job_id: int) -> Job:
        """One job; JobError when it does not exist."""
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id} in {self.path}; `ct2mri-node status` lists the jobs")
            dels = conn.execute(
                "SELECT destination, state, attempts, reason FROM deliveries WHERE job_id=?"
                " ORDER BY destination",
                (job_id,),
            ).fetchall()
        data = dict(row)
        data["translated"] = bool(data["translated"])
        data["timings"] = json.loads(data["timings"])
        data["deliveries"] = tuple(Delivery(**dict(d)) for d in dels)
        if data.get("destinations") is not None:
            data["destinations"] = tuple(json.loads(data["destinations"]))
        return Job(**data)

    # -- restart -------------------------------------------------------------------------
    def recover(self) -> int:
        """After a restart: jobs caught in translating/sending go back to queued."""
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state='queued', updated_at=? WHERE state IN ('translating','sending')",
                (now,),
            )
        if cur.rowcount:
            log.info("re-queued %d interrupted job(s)", cur.rowcount)
        return int(cur.rowcount)

    def count(self, *states: str) -> int:
        """How many jobs are in any of ``states`` (the SCP's queue limit reads it)."""
        marks = ",".join("?" * len(states))
        with self.connect() as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", states).fetchone()  # noqa: S608
        return int(row[0])

    def series_with_jobs(self) -> set[str]:
        """Series that have a job in any state other than ``received`` and no ``received`` job
        (purged jobs left out: a series sent again after retention removed it is new). A series
        with a ``received`` job was gaining instances (maybe changed ones) when the node stopped:
        it is watched again, whatever its older jobs."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT DISTINCT series_uid FROM jobs WHERE state!='received' AND purged_at IS NULL"
                " AND series_uid NOT IN (SELECT series_uid FROM jobs WHERE state='received')")
            return {r["series_uid"] for r in rows}

    def inputs_taken(self) -> dict[str, float]:
        """{series UID: when its newest job first took its input} for every unpurged series whose
        newest job was claimed (start-up compares it with the spool: see ``Node._redetect``)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT j.series_uid, j.started_at FROM jobs j WHERE j.purged_at IS NULL"
                " AND j.started_at IS NOT NULL"
                " AND j.id = (SELECT MAX(k.id) FROM jobs k WHERE k.series_uid = j.series_uid)").fetchall()
        return {r["series_uid"]: float(r["started_at"]) for r in rows}

    # -- retention -----------------------------------------------------------------------
    def purge_candidates(self) -> list[PurgeCandidate]:
        """Every unpurged job of each series that has an unpurged finished job (``ops.retention``
        decides which series are due; the other jobs of a series are there to veto it)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT id, series_uid, state, finished_at FROM jobs WHERE purged_at IS NULL AND series_uid IN"
                " (SELECT series_uid FROM jobs WHERE purged_at IS NULL AND state IN ('done','failed','ignored','refused','superseded'))"
                " ORDER BY id"
            ).fetchall()
        return [PurgeCandidate(**dict(r)) for r in rows]

    def mark_purged(self, finished: Mapping[int, float | None], purged_at: float | None = None) -> bool:
        """Mark jobs purged, atomically, only if each is still finished, unpurged, finished at the time
        given (job id -> finished_at as planned) and no job of their series is active; else False."""
        now = time.time() if purged_at is None else purged_at
        with self.transaction() as conn:
            for job_id, finished_at in finished.items():
                row = conn.execute(
                    "SELECT series_uid, state, finished_at, purged_at FROM jobs WHERE id=?", (job_id,)
                ).fetchone()
                if row is None or row["purged_at"] is not None or row["state"] not in FINISHED_STATES:
                    return False
                if row["finished_at"] != finished_at or self._has_active_job(conn, row["series_uid"]):
                    return False
            marks = ",".join("?" * len(finished))
            conn.execute(f"UPDATE jobs SET purged_at=? WHERE id IN ({marks})", (now, *finished))  # noqa: S608
        return True

    def purged_ids(self, job_ids: list[int]) -> set[int]:
        """Which of ``job_ids`` are purged (their leftover output folders may go)."""
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        with self.connect() as conn:
            rows = conn.execute(
                f"SELECT id FROM jobs WHERE purged_at IS NOT NULL AND id IN ({marks})", job_ids)  # noqa: S608
            return {int(r["id"]) for r in rows}

    @staticmethod
    def _has_active_job(conn: Connection, series_uid: str) -> bool:
        marks = ",".join("?" * len(ACTIVE_STATES))
        row = conn.execute(
            f"SELECT 1 FROM jobs WHERE series_uid=? AND state IN ({marks}) LIMIT 1",  # noqa: S608
            (series_uid, *ACTIVE_STATES),
        ).fetchone()
        return row is not None

    @staticmethod
    def open_job_id(conn: Connection, series_uid: str) -> int | None:
        """The series' newest open job (:data:`OPEN_STATES`, never claimed: a job that took its
        input is not open), read in the caller's transaction; None when it has none (the store
        and the dispatch table both attach to it)."""
        marks = ",".join("?" * len(OPEN_STATES))
        row = conn.execute(
            f"SELECT id FROM jobs WHERE series_uid=? AND state IN ({marks}) AND started_at IS NULL"  # noqa: S608
            " ORDER BY id DESC LIMIT 1 FOR UPDATE",   # PostgreSQL: a claim skips it meanwhile
            (series_uid, *OPEN_STATES),
        ).fetchone()
        return None if row is None else int(row["id"])

    @staticmethod
    def start_attempt(conn: Connection, job_id: int, now: float) -> None:
        """Inside a claim's transaction: the job becomes ``translating`` and counts one more
        attempt (``started_at`` keeps its first value); used by every claim path."""
        conn.execute(
            "UPDATE jobs SET state='translating', attempts=attempts+1,"
            " started_at=COALESCE(started_at, ?), updated_at=? WHERE id=?",
            (now, now, job_id),
        )

    def _advance(self, job_id: int, assignments: str, values: tuple[Any, ...]) -> bool:
        """A worker's state change, made only while the job is not ``superseded``; False when it
        is (nothing written), JobError when there is no such job."""
        with self.transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {assignments}, updated_at=? WHERE id=? AND state!='superseded'",  # noqa: S608
                (*values, time.time(), job_id),
            )
            if cur.rowcount == 1:
                return True
            if conn.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone() is None:
                raise JobError(f"no job {job_id} in {self.path}")
        return False

    def _update(self, job_id: int, assignments: str, values: tuple[Any, ...]) -> None:
        with self.transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {assignments}, updated_at=? WHERE id=?",  # noqa: S608 (fixed SQL)
                (*values, time.time(), job_id),
            )
            if cur.rowcount == 0:
                raise JobError(f"no job {job_id} in {self.path}")


def open_job_store(config: NodeConfig, *, must_exist: bool = False) -> JobStore:
    """The configured job store: ``job_store.url`` (PostgreSQL), else ``jobs.sqlite3`` in the spool.

    Every role and command opens the store here (``serve``, ``worker``, ``status``, ``retry``,
    ``purge``), so they all read the same one from any machine. ``must_exist``: a SQLite file
    that is not there is a SpoolError (``status`` and friends read a store, never create one)."""
    from ..receive.spool import Spool

    settings = config.job_store
    if settings.url is not None:
        return JobStore(settings.url, settings.password(), settings.connect_timeout_s)
    db = Spool(config.spool_dir).db_path
    if must_exist and not db.exists():
        raise SpoolError(f"no job database at {db}; has the node run with this config (`ct2mri-node serve`)?")
    return JobStore(db)
