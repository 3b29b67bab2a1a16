"""``ct2mri-node purge``: run one retention sweep now (what a running node does by itself).

It takes the spool's receiver lock, so it refuses to run beside a node that receives into the
same spool (that node sweeps every ``retention.sweep_interval_s``). ``--dry-run`` only reads the
job database and lists what would go, so it also works while a node runs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from ..jobs.store import open_job_store
from ..ops.retention import SweepReport, enabled, sweep
from ..receive.spool import Spool

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "purge",
        help="remove the CT input and MR output of old finished jobs now (retention settings)",
        description="Run one retention sweep: remove the received CT and the MR series of jobs "
        "done more than retention.delivered_hours ago (and failed more than retention.failed_hours "
        "ago, when set). Job records and provenance stay.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration (default: the embedded one)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    parser.set_defaults(func=run)


def _print(report: SweepReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    for removal in report.removed:
        jobs = ", ".join(str(j) for j in removal.jobs)
        print(f"{verb} series {removal.series_uid} (job {jobs}): CT input and MR output")
    for uid in report.skipped:
        print(f"kept series {uid}: it is being received again or one of its jobs changed")
    print(f"{verb} {len(report.removed)} series ({report.job_count} jobs)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    settings = config.retention
    if not enabled(settings):
        print("retention is off (retention.delivered_hours and retention.failed_hours are null): nothing to remove")
        return 0
    spool = Spool(config.spool_dir)
    store = open_job_store(config, must_exist=True)   # job_store.url, else the spool's SQLite file
    if args.dry_run:
        _print(sweep(store, spool, settings, dry_run=True))
        return 0
    try:
        lock = spool.lock_receiver()
    except ConfigError:
        raise ConfigError(
            f"a ct2mri-node is running on the spool {spool.root} and purges by itself every "
            f"{settings.sweep_interval_s:g} s (retention.sweep_interval_s); stop it to purge by hand, "
            "or use --dry-run to see what is due"
        ) from None
    try:
        spool.remove_leftovers()
        _print(sweep(store, spool, settings))
    finally:
        lock.release()
    return 0
