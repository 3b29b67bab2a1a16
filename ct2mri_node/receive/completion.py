"""Series completion: when a received series is whole and may be translated.

A series is complete when no new instance of it has arrived for ``quiet_period_s`` and every
association that delivered part of it has closed, or, when a sender keeps its association open
(routers and PACS that send study after study on one association), after the longer
``open_association_quiet_s`` without a new instance even though the association stays open.

A background thread checks the open series a few times per quiet period and calls the sink
exactly once per completed series; instances that arrive over several associations or with
pauses shorter than the quiet period keep extending the same series. An instance that arrives
after its series completed opens the series again: it becomes a new job one quiet period later.
When the sink cannot record a complete series (the job database is away), the series stays
pending and is reported again every ``RETRY_S`` until it is recorded: nothing accepted is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

#: A complete series whose job could not be recorded (the job store unreachable) is tried again after this.
RETRY_S = 5.0


class SeriesSink(Protocol):
    """Where completion reports (the job store, wired in by node.py)."""

    def series_received(self, series_uid: str, study_uid: str, calling_ae: str | None = None) -> None:
        """First instance of a series seen (may be called again after a restart); ``calling_ae``
        sent it (None: unknown)."""

    def series_complete(
        self, series_uid: str, study_uid: str, last_instance_at: float, calling_ae: str | None = None
    ) -> None:
        """The series is complete; ``last_instance_at`` is wall-clock time of its last instance,
        ``calling_ae`` the AE title of the association that sent its last new instance (None when
        unknown, e.g. a series found in the spool after a restart)."""


@dataclass
class _Pending:
    study_uid: str
    last_arrival: float                    # monotonic
    last_arrival_wall: float               # time.time(), for latency records
    open_associations: set[int] = field(default_factory=set)
    hold_until: float = 0.0                # monotonic; not complete before (restart grace)
    calling_ae: str | None = None          # sender of the last new instance


class CompletionWatcher:
    """Tracks series being received and reports each complete one once to the sink."""

    def __init__(
        self,
        sink: SeriesSink,
        quiet_period_s: float,
        clock: Callable[[], float] = time.monotonic,
        open_association_quiet_s: float | None = None,
    ) -> None:
        self._sink = sink
        self._quiet = float(quiet_period_s)
        # never shorter than the quiet period: a released association must not wait longer
        self._open_quiet = max(self._quiet, float(
            10.0 if open_association_quiet_s is None else open_association_quiet_s))
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def instance_received(
        self, series_uid: str, study_uid: str, association: int | None, hold_s: float = 0.0,
        calling_ae: str | None = None,
    ) -> None:
        """Record an accepted instance delivered on ``association`` (None: not on a network) by
        ``calling_ae`` (the association's calling AE title, for routing and priority rules).

        ``hold_s`` keeps the series open at least that long (a series found in the spool after
        a restart waits for its sender to re-send the rest instead of completing half-received).
        """
        with self._lock:
            entry = self._pending.get(series_uid)
            new = entry is None
            if entry is None:
                entry = _Pending(study_uid, 0.0, 0.0)
                self._pending[series_uid] = entry
            entry.last_arrival = self._clock()
            entry.last_arrival_wall = time.time()
            entry.hold_until = max(entry.hold_until, entry.last_arrival + hold_s)
            if association is not None:
                entry.open_associations.add(association)
            if calling_ae is not None:
                entry.calling_ae = calling_ae
        if new:
            log.info("receiving series %s", series_uid)
            self._sink.series_received(series_uid, study_uid, calling_ae)

    def touch(self, series_uid: str, association: int | None) -> None:
        """A re-sent (duplicate) instance: keep a still-pending series open, never open a new one.

        After a crash the sender re-sends what it had already sent; without this the series
        could complete mid-way through the re-send and be translated with slices missing.
        """
        with self._lock:
            entry = self._pending.get(series_uid)
            if entry is None:
                return
            entry.last_arrival = self._clock()
            if association is not None:
                entry.open_associations.add(association)

    def association_closed(self, association: int) -> None:
        """The association ended (released, aborted or lost): its series may now complete."""
        with self._lock:
            for entry in self._pending.values():
                entry.open_associations.discard(association)

    def pending(self) -> list[str]:
        """Series still waiting to complete."""
        with self._lock:
            return sorted(self._pending)

    def check(self) -> list[str]:
        """Report every series that is complete now; returns their UIDs."""
        now = self._clock()
        done: list[tuple[str, _Pending]] = []
        with self._lock:
            for uid, entry in list(self._pending.items()):
                if now < entry.hold_until:
                    continue
                idle = now - entry.last_arrival
                if idle >= (self._open_quiet if entry.open_associations else self._quiet):
                    done.append((uid, self._pending.pop(uid)))
        for uid, entry in done:
            if entry.open_associations:
                log.info("series %s complete (no new instance for %.1f s; its association is still open)",
                         uid, self._open_quiet)
            else:
                log.info("series %s complete", uid)
            try:
                self._sink.series_complete(uid, entry.study_uid, entry.last_arrival_wall, entry.calling_ae)
            except Exception as exc:  # e.g. the job database is unreachable: the spool still holds it
                log.warning("could not queue series %s (%s); trying again in %.0f s", uid, exc, RETRY_S)
                self._retry_later(uid, entry)
        return [uid for uid, _ in done]

    def _retry_later(self, uid: str, entry: _Pending) -> None:
        """Put a series whose completion could not be recorded back, due again in ``RETRY_S``
        (merged with any instance of it that arrived meanwhile)."""
        with self._lock:
            current = self._pending.get(uid)
            if current is None:
                entry.hold_until = self._clock() + RETRY_S
                self._pending[uid] = entry
            else:
                current.open_associations |= entry.open_associations
                current.hold_until = max(current.hold_until, self._clock() + RETRY_S)
                if current.calling_ae is None:
                    current.calling_ae = entry.calling_ae

    def start(self) -> None:
        """Start the background checking thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ct2mri-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (pending series stay in the spool and are re-detected later)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        interval = min(0.1, max(self._quiet / 5, 0.01))   # a quiet period of 0 still polls at 10 ms
        while not self._stop.wait(interval):
            self.check()
