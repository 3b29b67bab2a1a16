"""``ct2mri-node export-bundle``: write a checkpoint as a MONAI bundle, the format the field shares."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "export-bundle",
        help="write a checkpoint as a MONAI bundle (configs/metadata.json, configs/inference.json, models/)",
        description="Write --checkpoint as a MONAI bundle in --out: configs/metadata.json (MONAI's keys, the "
        "model card under ct2mri_node: spacing, intensity mapping, sampler; intended use: synthetic, not for "
        "diagnosis), configs/inference.json (the network, built by monai.bundle.ConfigParser) and "
        "models/model.safetensors (the checkpoint's weights, byte for byte). The bundle is loaded back "
        "before it is left in --out. A node runs it with `bundle: OUT` under models.<name>.",
    )
    parser.add_argument("--checkpoint", default="bundled",
                        help="checkpoint folder (model.safetensors + card.json), or 'bundled' (default)")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to create (new or empty)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.bundle import export_bundle

    out = export_bundle(args.checkpoint, args.out)
    print(f"MONAI bundle written to {out}")
    return 0
