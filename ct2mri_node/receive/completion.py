"""Series completion: a series is complete once every association that delivered part of it
has closed AND no new instance has arrived for ``quiet_period_s``.

A background thread checks the open series a few times per quiet period and calls the sink
exactly once per completed series; instances that arrive over several associations or with
pauses shorter than the quiet period keep extending the same series.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class SeriesSink(Protocol):
    """Where completion reports (the job store, wired in by node.py)."""

    def series_received(self, series_uid: str, study_uid: str) -> None:
        """First instance of a series seen (may be called again after a restart)."""

    def series_complete(self, series_uid: str, study_uid: str, last_instance_at: float) -> None:
        """The series is complete; ``last_instance_at`` is wall-clock time of its last instance."""


@dataclass
class _Pending:
    study_uid: str
    last_arrival: float                    # monotonic
    last_arrival_wall: float               # time.time(), for latency records
    open_associations: set[int] = field(default_factory=set)
    hold_until: float = 0.0                # monotonic; not complete before (restart grace)


class CompletionWatcher:
    """Tracks series being received and reports each complete one once to the sink."""

    def __init__(
        self,
        sink: SeriesSink,
        quiet_period_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._quiet = float(quiet_period_s)
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def instance_received(
        self, series_uid: str, study_uid: str, association: int | None, hold_s: float = 0.0
    ) -> None:
        """Record an accepted instance delivered on ``association`` (None: not on a network).

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
        if new:
            log.info("receiving series %s", series_uid)
            self._sink.series_received(series_uid, study_uid)

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
                quiet = now - entry.last_arrival >= self._quiet and now >= entry.hold_until
                if not entry.open_associations and quiet:
                    done.append((uid, self._pending.pop(uid)))
        for uid, entry in done:
            log.info("series %s complete", uid)
            try:
                self._sink.series_complete(uid, entry.study_uid, entry.last_arrival_wall)
            except Exception:  # keep watching other series; the spool still holds this one
                log.exception("could not queue series %s; it is re-detected on restart", uid)
        return [uid for uid, _ in done]

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
        interval = min(0.1, max(self._quiet / 5, 0.01))
        while not self._stop.wait(interval):
            self.check()
