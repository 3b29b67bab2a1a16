"""The node: wires the SCP, the durable spool, series completion, the job store and the worker.

Start-up order makes restarts safe: interrupted jobs go back to the queue, series left in the
spool without a job are watched again (they complete one quiet period later), and only then
does the SCP accept new associations.

Roles: ``all`` (the default) receives and translates in this process; with
``queue.backend: celery`` it also publishes job ids to the broker, and ``receiver`` only
receives and publishes, leaving translation to ``ct2mri-node worker`` processes that share the
spool. With the celery backend no process requeues in-flight jobs at start (other workers may be
running them); a lapsed lease hands a dead worker's job to another (see ``jobs/queue.py``).

Both roles hold the spool's receiver lock while running (one receiving process per spool) and
run the retention sweep (``ops/retention.py``) every ``retention.sweep_interval_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydicom import Dataset

from .config import NodeConfig
from .errors import ConfigError, Ct2MriError, JobError, SeriesRejected
from .faults import fault_point
from .jobs.models import ModelPool
from .jobs.queue import JobDispatch, LeasedClaims, Publisher, priority_for, worker_identity
from .jobs.store import JobStore, open_job_store
from .jobs.worker import Worker, route_of, volume_limits
from .ops.health import HealthServer
from .ops.metrics import NodeMetrics
from .ops.observer import OpsObserver
from .ops.retention import RetentionSweeper
from .ops.retention import enabled as retention_enabled
from .receive.completion import CompletionWatcher
from .receive.lock import ReceiverLock
from .receive.scp import Admission, StoreSCP
from .receive.screen import screen_series
from .receive.spool import Spool, read_header
from .route.facts import SeriesFacts, read_facts, scan_series_folder
from .route.rules import Decision, decide

log = logging.getLogger(__name__)

ROLES = ("all", "receiver")


def load_translator(config: NodeConfig, name: str | None = None) -> Any:
    """Load one named model (None: the only or first one); the only place the node touches the
    model package."""
    from .model.translator import TranslationSettings, Translator

    models = config.named_models()
    settings_of = models[name] if name is not None else next(iter(models.values()))
    settings = TranslationSettings(steps=settings_of.steps, seed=settings_of.seed, device=settings_of.device,
                                   samples=settings_of.samples, overlap=settings_of.overlap)
    if settings_of.bundle is not None:
        return Translator(settings=settings, bundle=settings_of.bundle)
    return Translator(settings_of.checkpoint, settings)


def model_pool(config: NodeConfig) -> ModelPool:
    """Every named model of the config, each loaded on first use (see ``jobs/models.py``)."""
    return ModelPool(config.named_models(), lambda name: load_translator(config, name),
                     config.worker.max_loaded_models)


class Node:
    """A running ct2mri-node: receives CT, translates complete series, sends MR series."""

    def __init__(self, config: NodeConfig, translator: Any = None, role: str = "all") -> None:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if role == "receiver" and config.queue.backend != "celery":
            raise ConfigError("--role receiver needs queue.backend: celery and a broker_url in the config; "
                              "with the local queue no other process would translate")
        self.config = config
        self.role = role
        self._limits = volume_limits(config)
        self.metrics = NodeMetrics(receives=True, translates=role == "all")
        self.spool = Spool(config.spool_dir)
        self.metrics.observe_spool(self.spool)
        self.health: HealthServer | None = None
        self._translator = translator
        self._stop = threading.Event()
        self._worker_thread: threading.Thread | None = None
        self.store: JobStore | None = None
        self.scp: StoreSCP | None = None
        self.watcher: CompletionWatcher | None = None
        self.worker: Worker | None = None
        self.dispatch: JobDispatch | None = None
        self.publisher: Publisher | None = None
        self.retention: RetentionSweeper | None = None
        self._receiver_lock: ReceiverLock | None = None

    @property
    def distributed(self) -> bool:
        """Whether jobs go through the broker (queue.backend: celery)."""
        return self.config.queue.backend == "celery"

    # completion sink: the job store, plus waking the worker
    def series_received(self, series_uid: str, study_uid: str, calling_ae: str | None = None) -> None:
        """First instance of a series: open its ``received`` job record (with its sender)."""
        self._store().series_received(series_uid, study_uid, calling_ae)

    def series_complete(
        self, series_uid: str, study_uid: str, last_instance_at: float, calling_ae: str | None = None
    ) -> None:
        """Series complete: route it by the rules, screen its headers, then queue its job and wake
        the worker (or record it ignored, removing its CT, or refused, keeping its CT)."""
        fault_point("after_spool_before_job")
        if calling_ae is None:   # completed after a restart: the sender recorded when it began
            calling_ae = self._store().calling_ae_of(series_uid)
        decided_at = time.monotonic()
        decision = self._decide(series_uid, calling_ae)
        translate = decision.action == "translate"
        if translate:
            rejection = self._screen(series_uid)
            if rejection is not None:
                self._store().series_refused(series_uid, study_uid, last_instance_at,
                                             f"series refused ({rejection.reason}): {rejection}", calling_ae)
                self.metrics.series_refused.labels(reason=rejection.reason).inc()
                log.warning("series %s from %s refused before queueing (%s): %s", series_uid,
                            calling_ae or "an unknown AE", rejection.reason, rejection)
                return
        priority = self._priority(series_uid, calling_ae) if self.dispatch is not None and translate else None
        # set on the open job before it is queued, so no sweep can publish it with the default
        early = self.dispatch.set_priority(series_uid, priority) if self.dispatch and priority else None
        # the one step that may fail and be retried by completion (it is idempotent: an open job
        # is reused); nothing after it may raise, or a retry could queue a second job
        job_id = self._store().series_complete(series_uid, study_uid, last_instance_at, calling_ae,
                                               route=route_of(decision))
        self.metrics.routing_decisions.labels(rule=decision.rule, action=decision.action).inc()
        if decision.action != "translate":
            log.info("job %s of series %s %s by rule %r: %s", job_id, series_uid,
                     "ignored" if decision.action == "ignore" else "refused", decision.rule, decision.reason)
        if decision.action == "ignore":
            self._remove_ignored(series_uid, job_id, decided_at)
            return
        if not translate:
            return
        if self.dispatch is not None and priority is not None:
            try:
                job_id = early or self.dispatch.set_priority(series_uid, priority)
            except Ct2MriError as exc:   # queued all the same; published with the default priority
                log.error("job %s of series %s: could not set priority %s: %s", job_id, series_uid, priority, exc)
            if priority == "urgent":
                log.info("job %s of series %s goes to the urgent queue", job_id, series_uid)
        if self.publisher is not None:
            self.publisher.wake()
        if self.worker is not None:
            self.worker.wake()

    def _decide(self, series_uid: str, calling_ae: str | None) -> Decision:
        """The routing decision for a complete series, from the header of its first instance (lowest
        InstanceNumber, as ``explain`` reads it); a series whose headers cannot be read is refused
        (with rules) rather than guessed."""
        if self.config.rules is None:
            return decide(self.config, SeriesFacts(dataset=Dataset(), calling_ae=calling_ae))
        try:
            first = scan_series_folder(self.spool.incoming / series_uid).first   # lowest InstanceNumber
            facts = read_facts(first, calling_ae=calling_ae)
        except Exception as exc:  # noqa: BLE001 (the job records the reason; the CT stays spooled)
            log.warning("series %s cannot be routed: %s", series_uid, exc)
            return Decision(rule="(unreadable)", action="refuse", model=None, destinations=None,
                            reason=f"the series' header cannot be read for routing: {exc}")
        return decide(self.config, facts)

    def _screen(self, series_uid: str) -> SeriesRejected | None:
        """Why the spooled series can never be translated (header checks only), or None."""
        try:
            paths = self.spool.instance_paths(series_uid)
        except Ct2MriError as exc:   # no files: the worker records it, as before screening
            log.warning("series %s could not be screened: %s", series_uid, exc)
            return None
        return screen_series(paths, self._limits)

    def _remove_ignored(self, series_uid: str, job_id: int, decided_at: float) -> None:
        """An ignored series' spooled CT is removed (kept when an instance arrived since the
        decision, or another job of the series still needs it)."""
        try:
            removed = self.spool.remove_series(
                series_uid, confirm=lambda: self._store().mark_ignored_purged(job_id),
                unless_stored_since=decided_at)
        except Ct2MriError as exc:
            log.error("could not remove ignored series %s from the spool: %s", series_uid, exc)
            return
        if not removed:
            log.info("ignored series %s kept in the spool: it gained an instance or another job needs it",
                     series_uid)

    def _priority(self, series_uid: str, calling_ae: str | None) -> str:
        """``urgent`` or ``routine`` by the ``queue.urgent`` rules (calling AE, series description)."""
        rules = self.config.queue.urgent
        if not rules:
            return "routine"
        description = self.spool.series_description(series_uid)
        return priority_for(rules, calling_ae, description)

    def start(self) -> None:
        """Open the spool and store, load the model, start watching, working and listening."""
        self.spool.create()
        self._receiver_lock = self.spool.lock_receiver()
        self.spool.remove_leftovers()
        self.store = open_job_store(self.config)   # job_store.url, else SQLite in the spool
        self.metrics.observe_store(self.store)
        if self.distributed:
            self._start_publisher(self.store)
        else:
            self.store.recover()
        if self.config.ops.http_port is not None:
            loaded = (lambda: self._translator is not None) if self.role == "all" else None
            self.health = HealthServer(self.config, self.metrics, loaded, self.store)
            self.health.start()
        if self._translator is None and self.role == "all":
            pool = model_pool(self.config)
            pool.first()   # ready only once a model works; the others load on first use
            self._translator = pool
        self.watcher = CompletionWatcher(self, self.config.series.quiet_period_s,
                                         open_association_quiet_s=self.config.series.open_association_quiet_s)
        self._redetect()
        self.watcher.start()
        if self.role == "all":
            self._start_worker(self.store)
        if retention_enabled(self.config.retention):
            self.retention = RetentionSweeper(self.store, self.spool, self.config.retention, self.watcher.pending)
            self.retention.start()
        admission = Admission(self.config.limits, lambda: self._store().queued(),
                              lambda calling_ae: self._store().queued(calling_ae))
        self.scp = StoreSCP(self.config.node, self.config.calling_aes, self.spool, self.watcher, admission)
        self.scp.start()

    def _start_publisher(self, store: JobStore) -> None:
        """Celery backend: the dispatch table and the thread that publishes job ids."""
        from .jobs.distributed import make_app, publisher_send

        device = next(iter(self.config.named_models().values())).device
        self.dispatch = JobDispatch(store, self.config.queue.lease_s, worker_identity(device))
        self.publisher = Publisher(self.dispatch, publisher_send(make_app(self.config)), self.config.queue)
        self.publisher.start()

    def _start_worker(self, store: JobStore) -> None:
        """The in-process worker thread (with leases when worker processes share the store)."""
        claims = LeasedClaims(self.dispatch) if self.dispatch is not None else None
        self.worker = Worker(self.config, store, self.spool, self._translator, claims=claims)
        self.worker.observer = OpsObserver(store, self.metrics, self.config.ops.qa_preview)
        self._worker_thread = threading.Thread(
            target=self.worker.run, args=(self._stop,), name="ct2mri-worker", daemon=True
        )
        self._worker_thread.start()

    @property
    def port(self) -> int:
        """The port the SCP listens on."""
        if self.scp is None:
            return self.config.node.port
        return self.scp.port

    def stop(self) -> None:
        """Stop listening, finish the current job's step, stop the threads."""
        if self.scp is not None:
            self.scp.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self._stop.set()
        if self.worker is not None:
            self.worker.wake()
        if self._worker_thread is not None:
            self._worker_thread.join()
        if self.publisher is not None:
            self.publisher.stop()
        if self.health is not None:
            self.health.stop()
        if self.retention is not None:
            self.retention.stop()
        if self._receiver_lock is not None:
            self._receiver_lock.release()
            self._receiver_lock = None
        log.info("node stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler)."""
        self._stop.wait()

    def _redetect(self) -> None:
        """Watch again every spooled series that has no queued or finished job, and every one
        written to after its newest job took its input (a changed instance made durable just
        before a crash, before its job was recorded): its new job supersedes the old one."""
        known = self._store().series_with_jobs()
        taken = self._store().inputs_taken()
        for uid in self.spool.series_uids():
            if uid in known:
                if uid not in taken or not self.spool.written_since(uid, taken[uid]):
                    continue
                log.info("series %s changed in the spool after its job took its input; it will be translated again",
                         uid)
            paths = self.spool.instance_paths(uid)
            if not paths:
                continue
            header = read_header(paths[0])
            if uid not in known:
                log.info("series %s in the spool has no job; it will complete after the quiet period", uid)
            if self.watcher is not None:
                self.watcher.instance_received(uid, header.study_uid, None, self.config.series.restart_hold_s)

    def _store(self) -> JobStore:
        if self.store is None:
            raise JobError("the node is not started; call start() first")
        return self.store
