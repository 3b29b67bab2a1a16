"""``ct2mri-node phantoms``: write paired CT/MR phantom cases in the SynthRAD layout."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)


def _triple(cast: Callable[[str], Any], what: str) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for ``A,B,C`` (three values in z, y, x order)."""

    def parse(text: str) -> tuple[Any, ...]:
        parts = text.split(",")
        try:
            values = tuple(cast(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"{what} must be three comma-separated numbers Z,Y,X, got {text!r}")
        return values

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "phantoms",
        help="generate paired CT/MR phantom cases (SynthRAD layout) for training and tests",
        description="Write N paired CT/MR phantoms (head and pelvis) as <out>/<case>/{ct,mr,mask}.nii.gz "
        "plus phantom.json; synthetic data, not patients.",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write the cases into")
    parser.add_argument("--cases", required=True, type=int, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of case 0; case i uses seed + i (default 0)")
    parser.add_argument("--kinds", default="head,pelvis",
                        help="comma-separated kinds, used in turn (default head,pelvis)")
    parser.add_argument("--shape", type=_triple(int, "--shape"), help="grid Z,Y,X in voxels (default per kind)")
    parser.add_argument("--spacing", type=_triple(float, "--spacing"), help="spacing Z,Y,X in mm (default per kind)")
    parser.add_argument("--dicom", action="store_true", help="also write each CT as a DICOM series in <case>/ct_dicom/")
    parser.set_defaults(func=run)


def _ct_series_writer() -> Callable[..., Any]:
    """``write_ct_series`` from the CT DICOM writer, imported only when ``--dicom`` asks for it."""
    from ..training.ct_dicom import write_ct_series

    return write_ct_series


def run(args: argparse.Namespace) -> int:
    from ..training.phantoms import KINDS, write_phantoms
    from ..training.pairs import load_case

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"--kinds: unknown kind(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
    writer = _ct_series_writer() if args.dicom else None
    folders = write_phantoms(args.out, args.cases, args.seed, kinds, args.shape, args.spacing)
    if writer is not None:
        for i, folder in enumerate(folders):
            case = load_case(folder)
            writer(case.ct, case.spacing, folder / "ct_dicom", seed=args.seed + i)
            log.info("wrote CT DICOM series of %s", folder.name)
    print(f"wrote {len(folders)} phantom case(s) to {args.out}")
    return 0
