"""The ``ct2mri-node`` command line: parses arguments, configures logging, runs one command.

Each sub-command lives in its own module under :mod:`ct2mri_node.commands` and exposes
``register(subparsers)``; this module only wires them together and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import Ct2MriError

log = logging.getLogger(__name__)

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = (
    "serve",
    "worker",
    "translate",
    "phantoms",
    "prepare",
    "train",
    "evaluate",
    "export_bundle",
    "check_config",
    "explain",
    "echo",
    "status",
    "retry",
    "purge",
    "migrate_store",
    "hash_password",
)


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ct2mri-node",
        description="DICOM node that turns CT series into synthetic MR series (NOT FOR DIAGNOSIS).",
    )
    parser.add_argument("--version", action="version", version=f"ct2mri-node {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (patient identifiers are only ever logged at DEBUG)",
    )
    parser.add_argument("--log-json", action="store_true", help="write log records as JSON lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def configure_logging(level: str, json_format: bool = False) -> None:
    """Configure the root logger; only the CLI does this (library code just logs)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        from .logfmt import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom is chatty at INFO (it logs every association and may log identifiers).
    logging.getLogger("pynetdicom").setLevel(max(logging.getLevelName(level), logging.WARNING))


def main(argv: Sequence[str] | None = None, commands: Sequence[str] = COMMANDS) -> int:
    """Run one command; ``commands`` limits the parser to those modules (``python -m
    ct2mri_node.commands.train`` imports only what training needs: a GPU host without the node's
    DICOM and web dependencies can run it)."""
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    configure_logging(args.log_level, args.log_json)
    try:
        result = args.func(args)
    except Ct2MriError as exc:
        log.error("%s", exc)
        print(f"ct2mri-node {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
