"""``ct2mri-node evaluate``: score a checkpoint on paired CT/MR cases (masked MAE, PSNR, SSIM)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "evaluate",
        help="translate every case of a SynthRAD-layout folder and score it against the real MR",
        description="For each <data>/<case>/{ct,mr,mask}: translate the CT, compute the masked MAE, "
        "PSNR and SSIM of the synthetic MR against the real MR, and write a JSON report.",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder of cases (SynthRAD layout)")
    parser.add_argument("--checkpoint", default="bundled", help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N cases")
    parser.add_argument("--json", required=True, type=Path, dest="json_out", help="where to write the JSON report")
    parser.add_argument("--montage-dir", type=Path, help="write a PNG montage per case into this folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.translator import TranslationSettings
    from ..training.evaluate import evaluate, format_table, write_report

    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    settings = TranslationSettings(steps=args.steps, seed=args.seed, device=args.device)
    report = evaluate(args.data, args.checkpoint, settings, args.limit, args.montage_dir)
    write_report(report, args.json_out)
    print(format_table(report))
    print(f"report written to {args.json_out}")
    return 0
