"""Prometheus metrics of a running node, each in the node's own registry.

Event metrics come from thin subclasses of the spool and the job store (so the SCP and the
worker need no metric calls of their own): instances received, series completed, translation
seconds, send outcomes and the latency from the last CT instance to the MR series confirmed at
each destination. Jobs by state and the queue depth are read from the durable store at every
scrape, so they are right after a restart too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..errors import Ct2MriError, SpoolError
from ..jobs.store import STATES, JobStore
from ..receive.spool import InstanceHeader, Spool, StoreOutcome

log = logging.getLogger(__name__)

#: Buckets for durations from a second to about an hour.
_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
#: Content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeMetrics:
    """The node's metrics; one registry per node so that tests and nodes never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances_received = Counter(
            "ct2mri_instances_received", "CT instances received by C-STORE, by spool outcome",
            ["outcome"], registry=r)
        self.series_completed = Counter(
            "ct2mri_series_completed", "Series that became a job (complete after the quiet period)", registry=r)
        self.series_rejected = Counter(
            "ct2mri_series_rejected", "Jobs that failed before or during translation, by reason code",
            ["reason"], registry=r)
        self.translation_seconds = Histogram(
            "ct2mri_translation_seconds", "Wall time of one translation (sampling + post-processing)",
            buckets=_SECONDS_BUCKETS, registry=r)
        self.sends = Counter(
            "ct2mri_sends", "Send attempts by destination and outcome (done, pending, failed)",
            ["destination", "status"], registry=r)
        self.latency_seconds = Histogram(
            "ct2mri_last_ct_to_mr_confirmed_seconds",
            "From the last CT instance of a series to its MR series confirmed at a destination",
            ["destination"], buckets=_SECONDS_BUCKETS, registry=r)

        self.spool_purged = Counter(
            "ct2mri_spool_purged", "Spool folders removed by retention: kind=input (a series' CT) or output (a job's MR)",
            ["kind"], registry=r)

    def watch_spool(self, spool: Spool) -> None:
        """Export the spool's free bytes, read at each scrape."""
        self.registry.register(SpoolFreeCollector(spool))

    def watch_store(self, store: JobStore) -> None:
        """Export jobs by state and the queue depth, read from ``store`` at each scrape."""
        self.registry.register(JobStateCollector(store))

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return bytes(generate_latest(self.registry))


class JobStateCollector(Collector):
    """Jobs by state and due queue depth, counted in the job database at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def describe(self) -> list[Any]:
        return []   # no description at registration: it would read the database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily("ct2mri_jobs", "Jobs in the store by state", labels=["state"])
        depth = GaugeMetricFamily("ct2mri_queue_depth", "Jobs queued and due now")
        try:
            counts, due = self._store.state_counts()
        except Ct2MriError as exc:
            log.warning("metrics: cannot read the job store: %s", exc)
            return
        for state in STATES:
            by_state.add_metric([state], counts.get(state, 0))
        depth.add_metric([], due)
        yield by_state
        yield depth


class SpoolFreeCollector(Collector):
    """Free bytes on the spool's file system (``Spool.free_bytes``) at scrape time."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        free = GaugeMetricFamily("ct2mri_spool_free_bytes", "Free bytes on the spool's file system")
        free.add_metric([], self._spool.free_bytes())
        yield free


class MeteredSpool(Spool):
    """The spool, counting every C-STORE it is asked to keep by outcome."""

    def __init__(self, root: Any, metrics: NodeMetrics) -> None:
        super().__init__(root)
        self.metrics = metrics
        metrics.watch_spool(self)

    def store(self, data: bytes, header: InstanceHeader, *args: Any, **kwargs: Any) -> StoreOutcome:
        try:
            outcome = super().store(data, header, *args, **kwargs)
        except SpoolError:
            self.metrics.instances_received.labels("out_of_resources").inc()
            raise
        self.metrics.instances_received.labels(outcome.value).inc()
        return outcome

    def removed(self, kind: str) -> None:
        self.metrics.spool_purged.labels(kind).inc()


class MeteredJobStore(JobStore):
    """The job store, turning the worker's records into metrics as they are written."""

    def __init__(self, path: Any, metrics: NodeMetrics) -> None:
        super().__init__(path)
        self.metrics = metrics
        metrics.watch_store(self)

    def series_complete(self, *args: Any, **kwargs: Any) -> None:
        super().series_complete(*args, **kwargs)
        self.metrics.series_completed.inc()

    def record_timings(self, job_id: int, timings: Mapping[str, float]) -> None:
        """Store the timings; ``translation`` and ``latency:<destination>`` are observed too
        (``record_timing`` comes here)."""
        super().record_timings(job_id, timings)
        for stage, seconds in timings.items():
            if stage == "translation":
                self.metrics.translation_seconds.observe(seconds)
            elif stage.startswith("latency:"):
                self.metrics.latency_seconds.labels(stage.removeprefix("latency:")).observe(seconds)

    def record_delivery(self, job_id: int, destination: str, state: str, *args: Any, **kwargs: Any) -> None:
        super().record_delivery(job_id, destination, state, *args, **kwargs)
        self.metrics.sends.labels(destination, state).inc()
