"""``ct2mri-node retry JOB``: queue a failed (or done) job again."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .status import open_store

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "retry",
        help="queue a failed or done job again (a running node picks it up)",
        description="Queue a failed or done job again; destinations that already have the series "
        "are skipped, and a job whose MR series exists is not translated again.",
    )
    parser.add_argument("job", type=int, help="job id (see `ct2mri-node status`)")
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration (default: the embedded one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = open_store(args.config).retry(args.job)
    print(f"job {job.id} queued again (series {job.series_uid})")
    return 0
