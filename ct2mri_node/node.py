"""The node: wires the SCP, the durable spool, series completion, the job store and the worker.

Start-up order makes restarts safe: interrupted jobs go back to the queue, series left in the
spool without a job are watched again (they complete one quiet period later), and only then
does the SCP accept new associations.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .config import NodeConfig
from .errors import JobError
from .faults import fault_point
from .jobs.pipeline import PipelineOptions
from .jobs.store import JobStore
from .jobs.worker import Worker
from .ops.health import HealthServer
from .ops.metrics import MeteredJobStore, MeteredSpool, NodeMetrics
from .ops.observer import OpsObserver
from .receive.completion import CompletionWatcher
from .receive.scp import Admission, StoreSCP
from .receive.spool import Spool, read_header

log = logging.getLogger(__name__)


def load_translator(config: NodeConfig) -> Any:
    """Load the configured model once (the only place the node touches the model package)."""
    from .model.translator import TranslationSettings, Translator

    settings = TranslationSettings(steps=config.model.steps, seed=config.model.seed, device=config.model.device)
    return Translator(config.model.checkpoint, settings)


class Node:
    """A running ct2mri-node: receives CT, translates complete series, sends MR series."""

    def __init__(self, config: NodeConfig, translator: Any = None, pipeline_options: PipelineOptions | None = None) -> None:
        self.config = config
        self.metrics = NodeMetrics()
        self.spool: Spool = MeteredSpool(config.spool_dir, self.metrics)
        self.health: HealthServer | None = None
        self._translator = translator
        self._pipeline_options = pipeline_options
        self._stop = threading.Event()
        self._worker_thread: threading.Thread | None = None
        self.store: JobStore | None = None
        self.scp: StoreSCP | None = None
        self.watcher: CompletionWatcher | None = None
        self.worker: Worker | None = None

    # completion sink: the job store, plus waking the worker
    def series_received(self, series_uid: str, study_uid: str) -> None:
        """First instance of a series: open its ``received`` job record."""
        self._store().series_received(series_uid, study_uid)

    def series_complete(self, series_uid: str, study_uid: str, last_instance_at: float) -> None:
        """Series complete: queue its job and wake the worker."""
        fault_point("after_spool_before_job")
        self._store().series_complete(series_uid, study_uid, last_instance_at)
        if self.worker is not None:
            self.worker.wake()

    def start(self) -> None:
        """Open the spool and store, load the model, start watching, working and listening."""
        self.spool.create()
        self.store = MeteredJobStore(self.spool.db_path, self.metrics)
        self.store.recover()
        if self.config.ops.http_port is not None:
            self.health = HealthServer(self.config, self.metrics, lambda: self._translator is not None)
            self.health.start()
        if self._translator is None:
            self._translator = load_translator(self.config)
        self.watcher = CompletionWatcher(self, self.config.series.quiet_period_s)
        self._redetect()
        self.watcher.start()
        self.worker = Worker(self.config, self.store, self.spool, self._translator, self._pipeline_options)
        self.worker.observer = OpsObserver(self.store, self.metrics, self.config.ops.qa_preview)
        self._worker_thread = threading.Thread(
            target=self.worker.run, args=(self._stop,), name="ct2mri-worker", daemon=True
        )
        self._worker_thread.start()
        admission = Admission(self.config.limits, lambda: self._store().count("queued"))
        self.scp = StoreSCP(self.config.node, self.config.calling_aes, self.spool, self.watcher, admission)
        self.scp.start()

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
        if self.health is not None:
            self.health.stop()
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
