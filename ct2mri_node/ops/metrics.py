"""Prometheus metrics of a running node or worker, each in the process's own registry.

Event metrics come from listeners on the spool and the job store (:class:`SpoolMetrics`,
:class:`JobMetrics`, added by :meth:`NodeMetrics.observe_spool` / :meth:`NodeMetrics.observe_store`),
so neither the SCP nor the worker makes metric calls of its own and neither class is subclassed:
instances received, series completed, translation seconds, send outcomes and the latency from the
last CT instance to the MR series confirmed at each destination. Jobs by state, the queue depth
and the spool's free bytes are read at every scrape, so they are right after a restart too;
``ct2mri_destination_up`` is set by the destination prober (``ops/health.py``).

Each metric is registered only in the roles that update it (``receives``: ``serve`` of either
role; ``translates``: ``serve --role all`` and ``ct2mri-node worker``), so no role exports a
metric that nothing in it ever changes:

=========================================  ====================  ==============================
metric                                     updated by            exported by
=========================================  ====================  ==============================
ct2mri_instances_received_total            spool listener        receiving roles
ct2mri_series_completed_total              job store listener    receiving roles
ct2mri_spool_purged_total                  spool listener        receiving roles (retention)
ct2mri_routing_decisions_total             node (completion)     receiving roles
ct2mri_series_refused_total                node (completion)     receiving roles
ct2mri_jobs_superseded_total               job store listener    receiving roles
ct2mri_series_rejected_total               worker observer       translating roles
ct2mri_translation_seconds                 job store listener    translating roles
ct2mri_sends_total                         job store listener    translating roles
ct2mri_last_ct_to_mr_confirmed_seconds     job store listener    translating roles
ct2mri_destination_up                      destination prober    every role with ops.http_port
ct2mri_jobs, ct2mri_queue_depth            read at scrape        every role
ct2mri_spool_free_bytes                    read at scrape        every role
=========================================  ====================  ==============================
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..errors import Ct2MriError, SpoolError
from ..jobs.store import STATES, JobStore
from ..receive.spool import Spool, StoreOutcome

log = logging.getLogger(__name__)

#: Buckets for durations from a second to about an hour.
_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
#: Content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeMetrics:
    """The process's metrics; one registry per node or worker so that tests and nodes never collide.

    ``receives``: this process runs the SCP (instances, completed series, retention);
    ``translates``: it runs a worker (translations, sends, latency, rejections). A metric of a
    role the process does not have still exists (callers need no checks) but is not registered,
    so it is never exported.
    """

    def __init__(self, receives: bool = True, translates: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        rx = r if receives else None
        tx = r if translates else None
        self.instances_received = Counter(
            "ct2mri_instances_received", "CT instances received by C-STORE, by spool outcome (receiving roles only)",
            ["outcome"], registry=rx)
        self.series_completed = Counter(
            "ct2mri_series_completed",
            "Series that became a job (complete after the quiet period; receiving roles only)", registry=rx)
        self.spool_purged = Counter(
            "ct2mri_spool_purged", "Spool folders removed by retention: kind=input (a series' CT) or output "
            "(a job's MR); receiving roles only (they run the sweep)",
            ["kind"], registry=rx)
        self.routing_decisions = Counter(
            "ct2mri_routing_decisions",
            "Routing decisions for complete series, by rule and action (receiving roles only: they route)",
            ["rule", "action"], registry=rx)
        self.series_refused = Counter(
            "ct2mri_series_refused",
            "Complete series refused by the header checks before they were queued, by reason code",
            ["reason"], registry=rx)
        self.jobs_superseded = Counter(
            "ct2mri_jobs_superseded",
            "Jobs that ended superseded: their series changed after they had taken their input, and a new "
            "job translates it (receiving roles only: completion records it)", registry=rx)
        self.series_rejected = Counter(
            "ct2mri_series_rejected", "Jobs that failed before or during translation, by reason code",
            ["reason"], registry=tx)
        self.translation_seconds = Histogram(
            "ct2mri_translation_seconds", "Wall time of one translation (sampling + post-processing)",
            buckets=_SECONDS_BUCKETS, registry=tx)
        self.sends = Counter(
            "ct2mri_sends", "Send attempts by destination and outcome (done, pending, failed)",
            ["destination", "status"], registry=tx)
        self.latency_seconds = Histogram(
            "ct2mri_last_ct_to_mr_confirmed_seconds",
            "From the last CT instance of a series to its MR series confirmed at a destination",
            ["destination"], buckets=_SECONDS_BUCKETS, registry=tx)
        self.destination_up = Gauge(
            "ct2mri_destination_up",
            "1 when the destination answered its last background probe (C-ECHO, or a writable folder), else 0",
            ["destination"], registry=r)

    def observe_spool(self, spool: Spool) -> None:
        """Count the spool's stores and removals (a listener) and export its free bytes."""
        spool.listeners.append(SpoolMetrics(self))
        self.watch_spool(spool)

    def observe_store(self, store: JobStore) -> None:
        """Turn the store's records into metrics (a listener) and export jobs by state."""
        store.listeners.append(JobMetrics(self))
        self.watch_store(store)

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


class SpoolMetrics:
    """A :class:`~ct2mri_node.receive.spool.SpoolListener`: every C-STORE the spool is asked to
    keep, by outcome, and every folder retention removes."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def instance_stored(self, outcome: StoreOutcome, nbytes: int) -> None:
        self.metrics.instances_received.labels(outcome.value).inc()

    def store_failed(self, error: SpoolError) -> None:
        self.metrics.instances_received.labels("out_of_resources").inc()

    def folder_removed(self, kind: str) -> None:
        self.metrics.spool_purged.labels(kind).inc()


class JobMetrics:
    """A :class:`~ct2mri_node.jobs.store.JobListener`: the worker's records as metrics."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def series_completed(self) -> None:
        self.metrics.series_completed.inc()

    def timings_recorded(self, job_id: int, timings: Mapping[str, float]) -> None:
        """``translation`` and ``latency:<destination>`` are observed; other stages are not metrics."""
        for stage, seconds in timings.items():
            if stage == "translation":
                self.metrics.translation_seconds.observe(seconds)
            elif stage.startswith("latency:"):
                self.metrics.latency_seconds.labels(stage.removeprefix("latency:")).observe(seconds)

    def delivery_recorded(self, job_id: int, destination: str, state: str) -> None:
        self.metrics.sends.labels(destination, state).inc()

    def job_superseded(self, job_id: int) -> None:
        self.metrics.jobs_superseded.inc()
