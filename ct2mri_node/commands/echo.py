"""``ct2mri-node echo DESTINATION``: C-ECHO a configured DICOM destination."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..config import DicomDestination, DicomWebDestination, load_config
from ..errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "echo",
        help="C-ECHO a configured DICOM destination and report",
        description="Open an association to a configured dicom destination and send C-ECHO.",
    )
    parser.add_argument("destination", help="destination name from the config")
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration (default: the embedded one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deliver.dispatch import echo

    config = load_config(args.config)
    dest = config.destination(args.destination)
    if isinstance(dest, DicomWebDestination):   # a QIDO-RS search instead of C-ECHO
        start = time.perf_counter()
        echo(dest, config.node.ae_title)
        print(f"QIDO-RS {dest.name} ({dest.url}): success in {1000 * (time.perf_counter() - start):.0f} ms")
        return 0
    if not isinstance(dest, DicomDestination):
        raise ConfigError(f"destination {dest.name} is a {dest.type} destination; only dicom and dicomweb "
                          "ones can be echoed")
    start = time.perf_counter()
    echo(dest, config.node.ae_title)
    print(
        f"C-ECHO {dest.name} ({dest.ae_title}@{dest.host}:{dest.port}): success "
        f"in {1000 * (time.perf_counter() - start):.0f} ms"
    )
    return 0
