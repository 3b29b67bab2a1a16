"""The worker's operations hook: provenance record, QA preview and rejection metrics per job.

Nothing here may fail a job: an error writing a preview is logged and the job goes on. A
provenance record that cannot be written is logged as an error (the MR series is still valid).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import Ct2MriError, SeriesRejected
from ..jobs.pipeline import PipelineResult
from ..jobs.store import Job, JobStore
from .metrics import NodeMetrics
from .preview import preview_path, write_preview
from .provenance import build_provenance

log = logging.getLogger(__name__)


class OpsObserver:
    """Called by the worker after a series is translated and when a job fails."""

    def __init__(self, store: JobStore, metrics: NodeMetrics | None, qa_preview: bool) -> None:
        self.store = store
        self.metrics = metrics
        self.qa_preview = qa_preview

    def job_translated(self, job: Job, result: PipelineResult, output_dir: Path) -> None:
        """Record provenance and, if configured, write the QA preview beside the output."""
        try:
            self.store.record_provenance(job.id, build_provenance(job, result))
        except Ct2MriError as exc:
            log.error("job %d: cannot record provenance: %s", job.id, exc)
        if not self.qa_preview:
            return
        try:
            path = write_preview(preview_path(output_dir), result)
        except (OSError, ValueError, Ct2MriError) as exc:
            log.warning("job %d: no QA preview: %s", job.id, exc)
            return
        log.info("job %d: QA preview %s", job.id, path)

    def job_failed(self, job: Job, exc: Exception) -> None:
        """Count a job that failed before its series was translated, by reason code."""
        if self.metrics is None or self.store.get(job.id).translated:
            return
        reason = exc.reason if isinstance(exc, SeriesRejected) else type(exc).__name__
        self.metrics.series_rejected.labels(reason).inc()
