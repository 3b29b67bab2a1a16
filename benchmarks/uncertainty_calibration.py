"""Calibration of the uncertainty map on held-out phantom cases with known truth.

    .venv/bin/python benchmarks/uncertainty_calibration.py [--data data/heldout] [--samples 8]
        [--steps 4] [--limit N] [--checkpoint bundled] [--json OUT]

For each case (``ct2mri-node phantoms --family heldout``: an evaluation-only family the bundled
model never saw) the CT is translated with N samples exactly as the node does it, giving the MR
(the mean) and the uncertainty map (per-voxel SD across the samples, in MR pixel units). Both are
compared with the truth MR in the evaluation's normalised units (``training/metrics.normalise``:
each volume's own 1st/99th percentile inside the body -> [0, 1]); the SD is put in the same units
by dividing by the synthetic MR's P99 - P1 (the normalisation is linear there).

Reported per case and overall (inside the body mask):

- ``spearman``: Spearman rank correlation between the SD and the absolute error of the mean (does
  the map point at the voxels that are wrong?);
- ``within_2sd``: share of voxels whose truth lies within mean +- 2 SD (about 0.95 for a
  calibrated Gaussian spread; far below: over-confident; at 1: under-confident);
- ``median_error_over_sd``: median of |error| / SD (about 0.67 for a calibrated Gaussian);
- ``mean_sd`` and ``mae`` in normalised units.

The samples differ only in the noise the sampler adds, so the map shows where the model's
output depends on that noise; an error the model makes the same way in every sample (a contrast
it learned wrongly, anatomy it was never trained on) has zero spread and is invisible to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MAX_VOXELS = 200_000   # voxels per case for the rank correlation (a seeded random subset)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties) of two 1-D arrays."""
    from scipy.stats import spearmanr

    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def case_numbers(truth: np.ndarray, mean: np.ndarray, sd: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> dict[str, float]:
    """The calibration numbers of one case (see the module docstring)."""
    from ct2mri_node.training.metrics import NORMALISE_PERCENTILES, normalise

    low, high = np.percentile(mean[mask], NORMALISE_PERCENTILES)
    scale = float(high - low) if high > low else 1.0
    error = np.abs(normalise(mean, mask) - normalise(truth, mask))[mask]
    spread = (sd.astype(np.float64) / scale)[mask]
    pick = rng.choice(error.size, size=min(MAX_VOXELS, error.size), replace=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(spread > 0, error / spread, np.inf)
    return {
        "voxels": int(error.size),
        "spearman": spearman(spread[pick], error[pick]),
        "within_2sd": float(np.mean(error <= 2.0 * spread)),
        "median_error_over_sd": float(np.median(ratio)),
        "mean_sd": float(spread.mean()),
        "mae": float(error.mean()),
        "zero_sd_share": float(np.mean(spread == 0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/heldout",
                        help="held-out cases (`ct2mri-node phantoms --family heldout --out data/heldout --cases 6 --seed 9000`)")
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="first N cases only")
    parser.add_argument("--json", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples must be at least 2 (the map is the spread across samples)")

    from ct2mri_node.model.translator import TranslationSettings, Translator
    from ct2mri_node.training.pairs import list_cases, load_case

    translator = Translator(args.checkpoint, TranslationSettings(steps=args.steps, samples=args.samples,
                                                                 seed=args.seed, device="cpu"))
    cases = list_cases(args.data)[: args.limit]
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    print(f"model {translator.model_info.name} {translator.model_info.version}, {args.samples} samples, "
          f"{translator.settings.steps} evaluations/patch ({translator.settings.sampler}), seed {args.seed}")
    print(f"{'case':<26} {'voxels':>8} {'spearman':>8} {'in 2SD':>7} {'med|e|/SD':>9} {'mean SD':>8} "
          f"{'MAE':>6} {'SD=0':>6} {'s':>6}")
    for path in cases:
        case = load_case(path)
        start = time.perf_counter()
        result = translator.translate(case.ct, case.spacing)
        assert result.uncertainty is not None
        numbers = case_numbers(case.mr, result.mr.astype(np.float32), result.uncertainty, case.mask, rng)
        numbers["seconds"] = time.perf_counter() - start
        rows.append({"case": path.name, **numbers})
        print(f"{path.name:<26} {numbers['voxels']:>8} {numbers['spearman']:>8.3f} {numbers['within_2sd']:>7.3f} "
              f"{numbers['median_error_over_sd']:>9.2f} {numbers['mean_sd']:>8.4f} {numbers['mae']:>6.3f} "
              f"{numbers['zero_sd_share']:>6.3f} {numbers['seconds']:>6.0f}", flush=True)
    overall = {key: float(np.mean([r[key] for r in rows]))
               for key in ("spearman", "within_2sd", "median_error_over_sd", "mean_sd", "mae", "zero_sd_share")}
    print(f"{'mean over cases':<26} {'':>8} {overall['spearman']:>8.3f} {overall['within_2sd']:>7.3f} "
          f"{overall['median_error_over_sd']:>9.2f} {overall['mean_sd']:>8.4f} {overall['mae']:>6.3f} "
          f"{overall['zero_sd_share']:>6.3f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": args.samples, "steps": translator.settings.steps,
                                               "cases": rows, "mean": overall}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
