"""``ct2mri-node prepare``: resample paired cases to the model grid once, for many training runs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ConfigError
from ..training.families import TRAINING_FAMILIES

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "prepare",
        help="resample a SynthRAD-layout folder to the model spacing once (a prepared folder for `train --data`)",
        description="Write every case of --data, resampled to --spacing mm, into --out as numpy arrays "
        "(CT in HU as int16, raw MR as float16, body mask) with prepared.json. `ct2mri-node train --data OUT` "
        "then starts without resampling and needs neither SimpleITK nor the source images; the CT windows "
        "and the MR target are made when training loads it. --family generates cases straight into --out; "
        "an existing prepared folder is added to.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of cases (SynthRAD layout)")
    source.add_argument("--family", choices=tuple(TRAINING_FAMILIES),
                        help="generate cases of this data family straight into --out (no image files)")
    parser.add_argument("--cases", type=int, default=1, help="--family: number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="--family: seed of case 0; case i uses seed + i")
    parser.add_argument("--workers", type=int, default=0, help="--family: worker processes (default: one per CPU)")
    parser.add_argument("--out", required=True, type=Path, help="prepared folder to write or add to")
    parser.add_argument("--spacing", type=float, default=2.0, help="model spacing in mm, isotropic (default 2.0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.prepared import describe, write_generated, write_prepared

    if args.spacing <= 0:
        raise ConfigError(f"--spacing must be positive, got {args.spacing}")
    if args.family is not None:
        out = write_generated(args.family, args.cases, args.seed, args.out, args.spacing, args.workers)
    else:
        out = write_prepared(args.data, args.out, args.spacing)
    print(f"{describe(out)}: written to {out}")
    return 0


if __name__ == "__main__":
    from ..cli import main

    sys.exit(main(["--log-level", "INFO", "prepare", *sys.argv[1:]], commands=("prepare",)))
