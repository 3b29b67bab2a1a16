"""Provenance: for each job, what its synthetic MR series was made from and with, and where it went.

The translation-time part (source UIDs, instance count, model identity and weight hash,
sampler, steps, seed, output series UID) is written to the durable job store once the MR
series exists; per-destination results and timings are already durable in the store, and
:func:`job_report` joins them, so ``ct2mri-node status --json`` shows one record per job.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..jobs.pipeline import PipelineResult
from ..jobs.store import Job, JobStore

#: Version of the provenance record's layout (bump when a key changes meaning).
PROVENANCE_SCHEMA = 1


def build_provenance(job: Job, result: PipelineResult) -> dict[str, Any]:
    """The translation-time provenance of ``job`` from its pipeline result (JSON-ready)."""
    translation = result.translation
    settings = translation.settings
    series_uids = sorted({str(ds.SeriesInstanceUID) for ds in result.datasets})
    return {
        "schema": PROVENANCE_SCHEMA,
        "source": {
            "study_uid": str(result.volume.header.StudyInstanceUID),
            "series_uid": result.volume.series_instance_uid,
            "instances": len(result.volume.slices),
            "lossy": bool(result.volume.lossy),
            "notes": list(result.volume.notes),
        },
        "model": asdict(translation.model),
        "sampling": {
            "sampler": settings.sampler,
            "steps": settings.steps,
            "samples": settings.samples,
            "seed": settings.seed,
            "overlap": settings.overlap,
            "t0": settings.t0,
            "device": translation.device,
            "precision": translation.precision,
            "network_evaluations": translation.network_evaluations,
            "seconds": round(float(translation.seconds), 3),
        },
        "output": {
            "series_uid": series_uids[0] if len(series_uids) == 1 else series_uids,
            "instances": len(result.datasets),
        },
        "job": {"id": job.id, "attempt": job.attempts},
        "routing": {"rule": job.rule, "action": job.action, "model": job.model,
                    "destinations": None if job.destinations is None else list(job.destinations)},
    }


def destination_results(job: Job) -> dict[str, dict[str, Any]]:
    """Per destination: state, attempts, reason, send seconds and last-CT-to-confirmed seconds."""
    out: dict[str, dict[str, Any]] = {}
    for d in job.deliveries:
        out[d.destination] = {
            "state": d.state,
            "attempts": d.attempts,
            "reason": d.reason,
            "send_s": job.timings.get(f"send:{d.destination}"),
            "last_ct_to_confirmed_s": job.timings.get(f"latency:{d.destination}"),
        }
    return out


def job_report(store: JobStore, job: Job) -> dict[str, Any]:
    """The job as ``status --json`` shows it: its record plus a ``provenance`` object (or None)."""
    report = job.as_dict()
    record = store.provenance(job.id)
    if record is not None:
        record = {**record, "destinations": destination_results(job)}
    report["provenance"] = record
    return report
