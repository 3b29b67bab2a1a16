"""The Celery side of the job queue: the app, its one task, and a worker's runtime.

The broker carries job ids only (JSON, one integer); series data stays in the spool that every
role shares. Tasks are acknowledged late and rejected (re-queued) when their worker is lost;
each worker process runs the ``solo`` pool and prefetches one message, so a device translates
one series at a time. Queues: ``urgent`` is always consumed before ``routine``.

A task claims its job in the job store (:class:`~ct2mri_node.jobs.queue.JobDispatch`); a
re-delivered task for a job that is finished or held by a live worker does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Queue

from ..config import NodeConfig
from ..receive.spool import Spool
from .queue import PRIORITIES, JobDispatch, LeasedClaims
from .store import open_job_store
from .worker import Worker

log = logging.getLogger(__name__)

#: The name of the one task (receivers publish by name; they never import a translator).
TASK_NAME = "ct2mri.run_job"


def make_app(config: NodeConfig) -> Celery:
    """The Celery app for ``config.queue`` (broker only: results live in the job store).

    Callers use it with ``queue.backend: celery`` only (the node's publisher, the ``worker``
    command), and the config refuses that backend without a redis:// broker_url.
    """
    app = Celery("ct2mri_node", broker=config.queue.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_loss=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_queues=[Queue(name) for name in PRIORITIES],      # urgent first: consumed first
        task_default_queue="routine",
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=4.0,
        worker_cancel_long_running_tasks_on_connection_loss=True,   # Celery 6's default; leases cover re-runs
        broker_transport_options={
            "queue_order_strategy": "priority",                # strict order of task_queues
            # a message a dead worker took comes back after this; leases make it harmless, the
            # publisher's sweep makes it unnecessary, so keep it long
            "visibility_timeout": max(3600.0, 4 * config.queue.lease_s),
        },
    )
    return app


def publisher_send(app: Celery) -> Any:
    """``send(job_id, priority)`` for :class:`~ct2mri_node.jobs.queue.Publisher`: publish one id."""

    def send(job_id: int, priority: str) -> None:
        app.send_task(TASK_NAME, args=[int(job_id)], queue=priority,
                      retry=True, retry_policy={"max_retries": 1, "interval_start": 0.2})

    return send


@dataclass
class WorkerRuntime:
    """What a worker process holds for its whole life: the store, its leases and the loaded model."""

    config: NodeConfig
    worker: Worker
    dispatch: JobDispatch

    @classmethod
    def build(cls, config: NodeConfig, translator: Any, owner: str) -> WorkerRuntime:
        """Open the shared spool and job store; the translator is loaded by the caller, once.

        The caller wires operations to what is opened here (this module never imports ``ops``):
        ``worker.observer`` and listeners on ``worker.store`` (the ``worker`` command does)."""
        spool = Spool(config.spool_dir)
        spool.create()
        store = open_job_store(config)
        dispatch = JobDispatch(store, config.queue.lease_s, owner)
        worker = Worker(config, store, spool, translator, claims=LeasedClaims(dispatch))
        return cls(config, worker, dispatch)

    def run_job(self, job_id: int) -> str:
        """Claim and run job ``job_id``; a job that is not claimable is a no-op. Returns its state."""
        job = self.dispatch.claim(job_id)
        if job is None:
            log.info("job %d: not claimable (finished, not due, or running elsewhere); nothing to do", job_id)
            return "skipped"
        with self.worker.claims.holding(job):
            return self.worker.process(job).state


def register_task(app: Celery, runtime: WorkerRuntime) -> Any:
    """Bind the job task to this process's runtime (a worker registers it; receivers do not)."""

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_loss=True, ignore_result=True)
    def run_job(job_id: int) -> str:
        return runtime.run_job(int(job_id))

    return run_job
