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
from typing import Any

from .config import NodeConfig
from .errors import ConfigError, JobError
from .faults import fault_point
from .jobs.queue import JobDispatch, LeasedClaims, Publisher, priority_for, worker_identity
from .jobs.store import JobStore
from .jobs.worker import Worker
from .ops.health import HealthServer
from .ops.metrics import MeteredJobStore, MeteredSpool, NodeMetrics
from .ops.observer import OpsObserver
from .ops.retention import RetentionSweeper
from .ops.retention import enabled as retention_enabled
from .receive.completion import CompletionWatcher
from .receive.scp import Admission, StoreSCP
from .receive.spool import ReceiverLock, Spool, read_header

log = logging.getLogger(__name__)

ROLES = ("all", "receiver")


def _calling_ae() -> str | None:
    """The calling AE title when run inside a pynetdicom association's thread (C-STORE handlers
    run there), else None: lets the completion sink apply calling-AE priority rules."""
    requestor = getattr(threading.current_thread(), "requestor", None)
    title = getattr(requestor, "ae_title", None)
    return str(title).strip() if title is not None else None


def load_translator(config: NodeConfig) -> Any:
    """Load the configured model once (the only place the node touches the model package)."""
    from .model.translator import TranslationSettings, Translator

    settings = TranslationSettings(steps=config.model.steps, seed=config.model.seed, device=config.model.device,
                                   samples=config.model.samples)
    return Translator(config.model.checkpoint, settings)


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
        self.metrics = NodeMetrics()
        self.spool: Spool = MeteredSpool(config.spool_dir, self.metrics)
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
        self._calling: dict[str, str] = {}

    @property
    def distributed(self) -> bool:
        """Whether jobs go through the broker (queue.backend: celery)."""
        return self.config.queue.backend == "celery"

    # completion sink: the job store, plus waking the worker
    def series_received(self, series_uid: str, study_uid: str) -> None:
        """First instance of a series: open its ``received`` job record."""
        calling = _calling_ae()
        if calling is not None and self.config.queue.urgent:
            self._calling[series_uid] = calling
        self._store().series_received(series_uid, study_uid)

    def series_complete(self, series_uid: str, study_uid: str, last_instance_at: float) -> None:
        """Series complete: queue its job and wake the worker."""
        fault_point("after_spool_before_job")
        priority = self._priority(series_uid) if self.dispatch is not None else None
        # set on the open job before it is queued, so no sweep can publish it with the default
        early = self.dispatch.set_priority(series_uid, priority) if self.dispatch and priority else None
        self._store().series_complete(series_uid, study_uid, last_instance_at)
        if self.dispatch is not None and priority is not None:
            job_id = early or self.dispatch.set_priority(series_uid, priority)
            if priority == "urgent":
                log.info("job %s of series %s goes to the urgent queue", job_id, series_uid)
        if self.publisher is not None:
            self.publisher.wake()
        if self.worker is not None:
            self.worker.wake()

    def _priority(self, series_uid: str) -> str:
        """``urgent`` or ``routine`` by the ``queue.urgent`` rules (calling AE, series description)."""
        rules = self.config.queue.urgent
        if not rules:
            return "routine"
        description = self.spool.series_description(series_uid)
        return priority_for(rules, self._calling.pop(series_uid, None), description)

    def start(self) -> None:
        """Open the spool and store, load the model, start watching, working and listening."""
        self.spool.create()
        self._receiver_lock = self.spool.lock_receiver()
        self.spool.remove_leftovers()
        self.store = MeteredJobStore(self.spool.db_path, self.metrics)
        if self.distributed:
            self._start_publisher(self.store)
        else:
            self.store.recover()
        if self.config.ops.http_port is not None:
            ready = lambda: self.role == "receiver" or self._translator is not None  # noqa: E731
            self.health = HealthServer(self.config, self.metrics, ready)
            self.health.start()
        if self._translator is None and self.role == "all":
            self._translator = load_translator(self.config)
        self.watcher = CompletionWatcher(self, self.config.series.quiet_period_s)
        self._redetect()
        self.watcher.start()
        if self.role == "all":
            self._start_worker(self.store)
        if retention_enabled(self.config.retention):
            self.retention = RetentionSweeper(self.store, self.spool, self.config.retention, self.watcher.pending)
            self.retention.start()
        admission = Admission(self.config.limits, lambda: self._store().count("queued"))
        self.scp = StoreSCP(self.config.node, self.config.calling_aes, self.spool, self.watcher, admission)
        self.scp.start()

    def _start_publisher(self, store: JobStore) -> None:
        """Celery backend: the dispatch table and the thread that publishes job ids."""
        from .jobs.distributed import make_app, publisher_send

        self.dispatch = JobDispatch(store, self.config.queue.lease_s, worker_identity(self.config.model.device))
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
        """Watch again every spooled series that has no queued or finished job."""
        known = self._store().series_with_jobs()
        for uid in self.spool.series_uids():
            if uid in known:
                continue
            paths = self.spool.instance_paths(uid)
            if not paths:
                continue
            header = read_header(paths[0])
            log.info("series %s in the spool has no job; it will complete after the quiet period", uid)
            if self.watcher is not None:
                self.watcher.instance_received(uid, header.study_uid, None, self.config.series.restart_hold_s)

    def _store(self) -> JobStore:
        if self.store is None:
            raise JobError("the node is not started; call start() first")
        return self.store
