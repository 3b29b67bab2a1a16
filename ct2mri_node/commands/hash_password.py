"""``ct2mri-node hash-password``: make an ``ops.users`` entry for the status page's basic auth."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

from ..errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "hash-password",
        help="hash a password for ops.users (status page Retry button)",
        description="Print an scrypt hash (scrypt$N$r$p$salt$hash) of a password for ops.users. "
        "The password is read from the terminal (asked twice) or, with --stdin, from the first line of "
        "standard input; it is never taken from the command line.",
    )
    parser.add_argument("--stdin", action="store_true", help="read the password from standard input")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ops.auth import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    print(hash_password(password))
    return 0
