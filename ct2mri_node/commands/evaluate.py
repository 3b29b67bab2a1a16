"""``ct2mri-node evaluate``: score a checkpoint on paired CT/MR cases.

Masked MAE, PSNR and SSIM, the body correlation and, for cases with tissue labels, a per-tissue
table, every T1w order check (a case passes only when all hold), the uniformity inside big tissues,
the seam ratio of the sliding window and the older tissue-order fraction
(``training.evaluate.METRIC_DEFINITION``).
"""

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
        "PSNR, SSIM and correlation of the synthetic MR against the real MR and, when the case has "
        "tissue labels (labels.nii.gz + labels.json), the mean and SD of each tissue, whether every "
        "T1w order check holds (fluids dark, marrow bright, bone and air darkest, white > grey > CSF, "
        "fat > muscle > urine), the uniformity inside white matter and muscle and the seam ratio at "
        "the sliding window's patch edges; print a table and write a JSON report (key 'worst': the "
        "worst case of each).",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder of cases (SynthRAD layout)")
    parser.add_argument("--checkpoint", default="bundled", help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--steps", type=int,
                        help="network evaluations per patch and sample (default: the model card's)")
    parser.add_argument("--sampler", choices=["auto", "refine", "ddim", "ddpm"], default="auto",
                        help="sampler (default auto: the model's own)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--t0", type=int,
                        help="refine sampler: the timestep (1-999) the estimate is noised to before the DDIM "
                        "steps; needs --steps >= 2 to matter (default: the model card's)")
    parser.add_argument("--samples", type=int, default=1,
                        help="samples averaged into each synthetic MR (default 1)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="share of a sliding-window patch its neighbour also covers, 0 <= x < 1 (default 0.5)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N cases")
    parser.add_argument("--json", required=True, type=Path, dest="json_out", help="where to write the JSON report")
    parser.add_argument("--montage-dir", type=Path, help="write a PNG montage per case into this folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.translator import TranslationSettings
    from ..training.evaluate import evaluate, format_table, write_report

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    if args.t0 is not None and args.t0 < 1:
        raise ConfigError(f"--t0 must be at least 1, got {args.t0}")
    if not 0.0 <= args.overlap < 1.0:
        raise ConfigError(f"--overlap must be at least 0 and below 1, got {args.overlap}")
    settings = TranslationSettings(steps=args.steps, sampler=args.sampler, seed=args.seed, device=args.device,
                                   samples=args.samples, overlap=args.overlap, t0=args.t0)
    report = evaluate(args.data, args.checkpoint, settings, args.limit, args.montage_dir)
    write_report(report, args.json_out)
    print(format_table(report))
    print(f"report written to {args.json_out}")
    return 0
