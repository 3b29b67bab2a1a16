"""``ct2mri-node phantoms``: write paired CT/MR phantom cases in the SynthRAD layout."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..training.families import FAMILIES

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
        help="generate paired CT/MR cases of a data family (SynthRAD layout) for training and tests",
        description="Write N paired CT/MR cases as <out>/<case>/{ct,mr,mask}.nii.gz plus phantom.json "
        "(and labels.nii.gz/labels.json); synthetic data, not patients. Families: phantom (head and "
        "pelvis phantoms, folders case<i>_<kind>), randomised (domain-randomised head, pelvis, abdomen), "
        "icbm (heads with real brain anatomy from the ICBM152 2009a templates of nilearn: "
        "pip install 'ct2mri-node[train]'), heldout and independent (evaluation only: no training run "
        "takes them); other families than phantom write folders <family>_<i>_<kind>.",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write the cases into")
    parser.add_argument("--cases", required=True, type=int, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of case 0; case i uses seed + i (default 0)")
    parser.add_argument("--family", default="phantom", choices=tuple(FAMILIES),
                        help="data family (default phantom)")
    parser.add_argument("--kinds", default=None,
                        help="comma-separated kinds, used in turn (default: all of the family's kinds; "
                        "phantom: head,pelvis; randomised: head,pelvis,abdomen; icbm: head)")
    parser.add_argument("--shape", type=_triple(int, "--shape"),
                        help="grid Z,Y,X in voxels (default per kind, random for randomised and icbm)")
    parser.add_argument("--spacing", type=_triple(float, "--spacing"),
                        help="spacing Z,Y,X in mm (default per kind, random for randomised and icbm)")
    parser.add_argument("--dicom", action="store_true", help="also write each CT as a DICOM series in <case>/ct_dicom/")
    parser.set_defaults(func=run)


def _ct_series_writer() -> Callable[..., Any]:
    """``write_ct_series`` from the CT DICOM writer, imported only when ``--dicom`` asks for it."""
    from ..training.ct_dicom import write_ct_series

    return write_ct_series


def run(args: argparse.Namespace) -> int:
    from ..training.families import family, write_family
    from ..training.pairs import load_case
    from ..training.phantoms import write_phantoms

    family_name = args.family
    known = tuple(family(family_name).KINDS)
    kinds = known if args.kinds is None else tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise ConfigError(f"--kinds: unknown kind(s) {', '.join(unknown) or '(none)'} for family {family_name}; "
                          f"choose from {', '.join(known)}")
    writer = _ct_series_writer() if args.dicom else None
    if family_name == "phantom":
        folders = write_phantoms(args.out, args.cases, args.seed, kinds, args.shape, args.spacing)
    else:
        folders = write_family(args.out, family_name, args.cases, args.seed, kinds, args.shape, args.spacing)
    if writer is not None:
        for i, folder in enumerate(folders):
            case = load_case(folder)
            writer(case.ct, case.spacing, folder / "ct_dicom", seed=args.seed + i)
            log.info("wrote CT DICOM series of %s", folder.name)
    print(f"wrote {len(folders)} {family_name} case(s) to {args.out}")
    return 0
