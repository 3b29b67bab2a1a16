"""``ct2mri-node explain --config FILE CT_DIR``: which rule decides a series on disk, and why.

An admin's dry run of the routing rules: reads the header of the series' first instance
(lowest InstanceNumber), evaluates every rule in order and prints each match entry held or
failed, then the decision. Nothing is translated, spooled or sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from ..config import load_config
from ..route import explain, format_explanation, read_facts, scan_series_folder

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "explain",
        help="show which routing rule decides a CT series on disk, and why (never translates)",
        description="Evaluate the routing rules of a configuration against the first instance of a "
                    "CT series in a folder: every rule in order, each match entry held or failed, "
                    "and the decision. Nothing is translated or sent.",
    )
    parser.add_argument("ct_dir", type=Path, metavar="CT_DIR", help="folder with the CT series' DICOM files")
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration (default: the embedded one)")
    parser.add_argument("--calling-ae", default=None, metavar="AE",
                        help="the sender's AE title, for calling_ae entries (default: unknown sender)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    scan = scan_series_folder(args.ct_dir)
    facts = read_facts(scan.first, calling_ae=args.calling_ae)
    traces, decision = explain(config, facts)
    if args.json:
        print(json.dumps({
            "instance": str(scan.first),
            "dicom_files": scan.dicom_files,
            "skipped_files": scan.skipped_files,
            "series_count": len(scan.series_uids),
            "calling_ae": args.calling_ae,
            "rules": [dataclasses.asdict(t) for t in traces],
            "decision": dataclasses.asdict(decision),
        }, indent=2))
        return 0
    print(f"series: first instance {scan.first.name} of {scan.dicom_files} DICOM file(s) in {args.ct_dir}"
          + (f" ({scan.skipped_files} other file(s) skipped)" if scan.skipped_files else ""))
    if len(scan.series_uids) > 1:
        print(f"warning: the folder holds {len(scan.series_uids)} series; this explains the one of "
              f"{scan.first.name} (a node decides each series on its own)")
    print(f"sender: {args.calling_ae or 'unknown (use --calling-ae AE)'}")
    print(format_explanation(traces, decision))
    return 0
