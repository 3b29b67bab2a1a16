"""``ct2mri-node status``: list jobs with state, timings, reasons and provenance.

``--json`` prints one object per job: the job record plus ``provenance`` (source UIDs, model
name, version and weight hash, sampler, steps, seed, output series UID, per-destination
results and timings), read from the durable job store, so it survives restarts.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime
from pathlib import Path

from ..config import NodeConfig, load_config
from ..errors import SpoolError
from ..jobs.store import Job, JobStore, open_job_store
from ..ops.provenance import job_report
from ..receive.spool import Spool

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "status",
        help="list the node's jobs with state, timings and reasons",
        description="Read the job database in the spool and list every job.",
    )
    parser.add_argument("--json", action="store_true", help="print the jobs as JSON")
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration (default: the embedded one)")
    parser.set_defaults(func=run)


def existing_db(config: NodeConfig) -> Path:
    """The job database of the configured spool (``Spool.db_path``); SpoolError when the node
    never ran there (``status``, ``retry`` and ``purge`` read a store, never create one)."""
    db = Spool(config.spool_dir).db_path
    if not db.exists():
        raise SpoolError(f"no job database at {db}; has the node run with this config (`ct2mri-node serve`)?")
    return db


def open_store(config_path: Path | None) -> JobStore:
    """The configured job store (``job_store.url``, else the spool's SQLite file), the same one
    from any machine; SpoolError when a SQLite store was never made there."""
    return open_job_store(load_config(config_path), must_exist=True)


def _line(job: Job, provenance: dict[str, object] | None = None) -> str:
    when = datetime.fromtimestamp(job.created_at).strftime("%Y-%m-%d %H:%M:%S")
    timings = " ".join(f"{k}={v:.2f}s" for k, v in job.timings.items() if not k.endswith("_at"))
    text = f"{job.id:>5}  {job.state:<11} {when}  attempts={job.attempts}  series={job.series_uid}"
    if job.rule is not None:
        text += f"\n       rule {job.rule!r}: {job.action}"
        if job.model is not None:
            text += f" with model {job.model}"
        if job.destinations is not None:
            text += f" to {', '.join(job.destinations) or 'no destination'}"
    if timings:
        text += f"\n       {timings}"
    for d in job.deliveries:
        text += f"\n       -> {d.destination}: {d.state}" + (f" ({d.reason})" if d.reason else "")
    if job.reason:
        text += f"\n       reason: {job.reason}"
    if job.purged_at is not None:
        purged = datetime.fromtimestamp(job.purged_at).strftime("%Y-%m-%d %H:%M:%S")
        text += f"\n       files removed by retention at {purged} (the record and provenance stay)"
    if provenance:
        model, sampling, output = (dict(provenance[k]) for k in ("model", "sampling", "output"))  # type: ignore[call-overload]
        text += (f"\n       model {model['name']} {model['version']} (sha256 {str(model['weight_hash'])[:12]}),"
                 f" {sampling['sampler']} {sampling['steps']} steps seed {sampling['seed']};"
                 f" MR series {output['series_uid']} ({output['instances']} instances)")
    return text


def run(args: argparse.Namespace) -> int:
    store = open_store(args.config)
    jobs = store.list()
    if args.json:
        print(json.dumps([job_report(store, j) for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no jobs")
    for job in jobs:
        print(_line(job, store.provenance(job.id)))
    return 0
