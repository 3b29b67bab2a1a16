"""``ct2mri-node check-config FILE``: validate a configuration file and summarise it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import NodeConfig, load_config

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "check-config",
        help="validate a YAML configuration (exit 0 if valid, 2 with the offending keys if not)",
        description="Validate a YAML configuration file; errors name the offending key.",
    )
    parser.add_argument("file", type=Path, help="YAML configuration file")
    parser.set_defaults(func=run)


def summary(config: NodeConfig) -> list[str]:
    """Human-readable lines describing what the config does."""
    callers = ", ".join(
        a.ae_title + (f"@{a.host}" if a.host else "") for a in config.calling_aes
    ) or "any caller"
    lines = [
        f"node: AE {config.node.ae_title} on {config.node.bind_address}:{config.node.port}",
        f"calling AEs allowed: {callers}",
        f"spool: {config.spool_dir}",
        f"series complete after {config.series.quiet_period_s:g} s quiet",
        f"model: {config.model.checkpoint} on {config.model.device}, "
        f"{config.model.steps or 'the model default'} steps, {config.model.samples} sample(s)",
    ]
    for dest in config.destinations:
        where = (
            f"{dest.ae_title}@{dest.host}:{dest.port}" if dest.type == "dicom" else str(dest.path)
        )
        lines.append(f"destination {dest.name} ({dest.type}): {where}")
    if not config.destinations:
        lines.append("warning: no destinations; MR series stay in the spool only")
    return lines


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: valid")
    for line in summary(config):
        print(f"  {line}")
    return 0
