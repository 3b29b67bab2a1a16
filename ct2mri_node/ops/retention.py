"""Spool retention: remove the received CT and the MR output of old finished jobs.

A node that runs for months would otherwise fill its disk and refuse every study (0xA700).
The unit of removal is a series: its ``incoming/<series uid>/`` folder and the
``output/<job id>/`` of every job of it. A series is due when every unpurged job of it is
finished and old enough: ``done`` (every destination confirmed) more than
``retention.delivered_hours`` ago, ``failed`` more than ``retention.failed_hours`` ago (never by
default). So a series with an open job, or with a failed job kept for an admin, keeps its files.
Job records, deliveries and provenance stay in the job database; the jobs get ``purged_at``.

:func:`plan` is the decision (pure: store rows, now, settings); :func:`sweep` carries it out on a
real spool, and :class:`RetentionSweeper` runs it every ``sweep_interval_s`` in a receiving node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..config import RetentionSettings
from ..errors import Ct2MriError
from ..jobs.outputs import output_job_ids, remove_output
from ..jobs.store import JobStore, PurgeCandidate
from ..receive.spool import Spool

log = logging.getLogger(__name__)

#: A series stored into (or re-sent) this recently is being received again: never removed now.
RECENT_STORE_S = 60.0


@dataclass(frozen=True)
class Removal:
    """One series due for removal, with its jobs (job id -> finished_at, as planned)."""

    series_uid: str
    jobs: dict[int, float | None]


@dataclass
class SweepReport:
    """What one sweep removed (or, in a dry run, would remove) and what it left for later."""

    removed: list[Removal] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # due, but being received again
    dry_run: bool = False

    @property
    def job_count(self) -> int:
        """How many jobs were (or would be) purged."""
        return sum(len(r.jobs) for r in self.removed)


def enabled(settings: RetentionSettings) -> bool:
    """Whether retention can ever remove anything."""
    return settings.delivered_hours is not None or settings.failed_hours is not None


def _due(row: PurgeCandidate, now: float, settings: RetentionSettings) -> bool:
    """Whether one job is finished long enough ago for its files to go."""
    # an ignored series' CT is removed when it is ignored; one kept then (another job of the series
    # was active) goes with the series' other finished jobs
    hours = {"done": settings.delivered_hours, "failed": settings.failed_hours, "ignored": 0.0,
             "refused": settings.failed_hours,   # a refused series is kept like a failed one
             "superseded": 0.0}.get(row.state)   # a superseded job goes with its series' newer jobs
    if hours is None or row.finished_at is None:
        return False
    return row.finished_at <= now - hours * 3600.0


def plan(rows: Iterable[PurgeCandidate], now: float, settings: RetentionSettings) -> list[Removal]:
    """The series due for removal: every unpurged job of the series is finished and due."""
    by_series: dict[str, list[PurgeCandidate]] = defaultdict(list)
    for row in rows:
        by_series[row.series_uid].append(row)
    return [
        Removal(uid, {r.id: r.finished_at for r in jobs})
        for uid, jobs in by_series.items()
        if all(_due(r, now, settings) for r in jobs)
    ]


def sweep(
    store: JobStore, spool: Spool, settings: RetentionSettings,
    pending: Callable[[], Sequence[str]] = tuple, dry_run: bool = False, now: float | None = None,
    recent_store_s: float = RECENT_STORE_S,
) -> SweepReport:
    """Remove what :func:`plan` says is due; ``pending`` lists series being received, and series
    this spool stored into within ``recent_store_s`` before the sweep (or during it) are kept."""
    started = time.monotonic()
    removals = plan(store.purge_candidates(), time.time() if now is None else now, settings)
    report = SweepReport(dry_run=dry_run)
    if dry_run:
        report.removed = removals
        return report
    for removal in removals:
        try:
            removed = _remove(store, spool, removal, pending, started - recent_store_s)
        except Ct2MriError as exc:   # one bad folder must not stop the others
            log.error("retention could not remove series %s: %s", removal.series_uid, exc)
            removed = False
        if removed:
            report.removed.append(removal)
            log.info("retention removed series %s (jobs %s): CT input and MR output",
                     removal.series_uid, ", ".join(map(str, removal.jobs)))
        else:
            report.skipped.append(removal.series_uid)
    leftovers = _remove_orphan_outputs(store, spool)
    if report.removed or report.skipped or leftovers:
        log.info("retention sweep: %d series (%d jobs) removed, %d kept while being received, "
                 "%d leftover output folder(s) removed",
                 len(report.removed), report.job_count, len(report.skipped), leftovers)
    return report


def _remove(
    store: JobStore, spool: Spool, removal: Removal, pending: Callable[[], Sequence[str]], stored_since: float
) -> bool:
    """Remove one series (jobs marked purged in the same step) and its outputs; False when kept."""
    uid = removal.series_uid

    def confirm() -> bool:   # runs with the series hidden and its stores held off
        return uid not in pending() and store.mark_purged(removal.jobs)

    if not spool.remove_series(uid, confirm=confirm, unless_stored_since=stored_since):
        log.info("retention kept series %s: it is being received again or a job of it changed", uid)
        return False
    for job_id in removal.jobs:
        remove_output(spool, job_id)
    return True


def _remove_orphan_outputs(store: JobStore, spool: Spool) -> int:
    """Output folders of purged jobs that a crash left behind (marked, not yet removed)."""
    orphans = store.purged_ids(output_job_ids(spool))
    for job_id in sorted(orphans):
        remove_output(spool, job_id)
    return len(orphans)


class RetentionSweeper:
    """A background thread that sweeps every ``sweep_interval_s`` until stopped."""

    def __init__(
        self, store: JobStore, spool: Spool, settings: RetentionSettings,
        pending: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self._store, self._spool, self._settings, self._pending = store, spool, settings, pending
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping (the first sweep runs one interval after start)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ct2mri-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a sweep in progress finishes its current series first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._settings.sweep_interval_s):
            try:
                sweep(self._store, self._spool, self._settings, self._pending)
            except Ct2MriError as exc:
                log.error("retention sweep failed, tried again in %g s: %s", self._settings.sweep_interval_s, exc)
            except Exception:  # keep the node running; the next sweep tries again
                log.exception("retention sweep failed unexpectedly")
