"""``ct2mri-node serve``: run the DICOM node until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from ..config import default_config_path, load_config
from ..errors import Ct2MriError, SpoolError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM node: receive CT, translate complete series, send the MR series",
        description="Listen for CT series (C-STORE), translate each complete series and send the "
        "synthetic MR series to every configured destination. Stops cleanly on SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--config", type=Path, default=None,
        help=f"YAML configuration (default: $CT2MRI_NODE_CONFIG or {default_config_path()})",
    )
    parser.add_argument(
        "--role", choices=["all", "receiver"], default="all",
        help="all: receive and translate in this process (default); receiver: receive and queue jobs "
        "for `ct2mri-node worker` processes (needs queue.backend: celery in the config)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..node import Node

    config = load_config(args.config)
    node = Node(config, role=args.role)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except Ct2MriError:   # e.g. ops.http_port taken: the message names the key
        node.stop()
        raise
    except OSError as exc:
        node.stop()
        raise SpoolError(
            f"cannot listen on {config.node.bind_address}:{config.node.port}: {exc.strerror or exc}; "
            "is another node running? change node.port in the config"
        ) from exc
    role = "" if args.role == "all" else f" (role {args.role})"
    print(f"ct2mri-node listening as {config.node.ae_title} on port {node.port}{role}", flush=True)
    while not stopping.wait(0.5):
        pass
    node.stop()
    return 0
