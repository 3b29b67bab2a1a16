"""Calibration numbers of an uncertainty map: does the SD rank the errors, do its bands cover the truth?

Pure numeric functions (numpy and scipy, no torch) so that ``benchmarks/uncertainty_calibration.py``
and the tests share one definition. ``error`` and ``spread`` are 1-D arrays of the body voxels in
the same units: the absolute error of the mean and the per-voxel SD across samples.

- :func:`spearman`: rank correlation of SD and |error| (1: the map orders the voxels by error);
- :func:`coverage`: share of voxels whose truth lies within mean +- k SD (0.683 / 0.954 for a
  calibrated Gaussian at k = 1 / 2);
- :func:`top_share`: share of the 10 % largest errors that fall in the 10 % highest-SD voxels
  (1: the map finds the worst voxels; 0.1: no better than chance). Ties at either cut are split
  evenly (the expected share under random tie-breaking), so a constant SD scores exactly 0.1
  and no voxel order decides the answer.
"""

from __future__ import annotations

import math

import numpy as np

#: Voxels per case for the rank correlation (a seeded random subset keeps it fast).
MAX_SPEARMAN_VOXELS = 200_000
#: The share of voxels :func:`top_share` takes as "largest" errors and "highest" SD.
TOP_FRACTION = 0.1
#: The numbers :func:`calibration_numbers` returns that are averaged into a family's summary row.
SUMMARY_KEYS: tuple[str, ...] = ("spearman", "within_1sd", "within_2sd", "top10_share",
                                 "median_error_over_sd", "mean_sd", "mae", "zero_sd_share")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties) of two 1-D arrays; NaN when either is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def coverage(error: np.ndarray, spread: np.ndarray, k: float) -> float:
    """Share of voxels with ``|error| <= k * spread`` (the truth inside mean +- k SD)."""
    error, spread = np.abs(np.asarray(error, dtype=np.float64)), np.asarray(spread, dtype=np.float64)
    return float(np.mean(error <= k * spread))


def _top_weights(values: np.ndarray, count: int) -> np.ndarray:
    """Per voxel, its share of membership in the ``count`` largest values (ties at the cut split evenly)."""
    cut = np.partition(values, values.size - count)[values.size - count]   # the count-th largest value
    above = values > cut
    at_cut = values == cut
    weights = above.astype(np.float64)
    weights[at_cut] = (count - int(above.sum())) / int(at_cut.sum())
    return weights


def top_share(error: np.ndarray, spread: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Share of the ``fraction`` largest |errors| that lie in the ``fraction`` highest-SD voxels."""
    error, spread = np.abs(np.asarray(error, dtype=np.float64)), np.asarray(spread, dtype=np.float64)
    if error.shape != spread.shape or error.ndim != 1:
        raise ValueError(f"error and spread must be 1-D arrays of one size, got {error.shape} and {spread.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if error.size == 0:
        return float("nan")
    count = max(1, math.ceil(fraction * error.size))
    return float(np.sum(_top_weights(error, count) * _top_weights(spread, count)) / count)


def calibration_numbers(error: np.ndarray, spread: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Every calibration number of one case from its body voxels' |error| and SD (same units)."""
    error, spread = np.abs(np.asarray(error, dtype=np.float64)), np.asarray(spread, dtype=np.float64)
    pick = rng.choice(error.size, size=min(MAX_SPEARMAN_VOXELS, error.size), replace=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(spread > 0, error / spread, np.inf)
    return {
        "voxels": int(error.size),
        "spearman": spearman(spread[pick], error[pick]),
        "within_1sd": coverage(error, spread, 1.0),
        "within_2sd": coverage(error, spread, 2.0),
        "top10_share": top_share(error, spread, TOP_FRACTION),
        "median_error_over_sd": float(np.median(ratio)),
        "mean_sd": float(spread.mean()),
        "mae": float(error.mean()),
        "zero_sd_share": float(np.mean(spread == 0)),
    }


def case_numbers(truth: np.ndarray, mean: np.ndarray, sd: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> dict[str, float]:
    """The calibration numbers of one volume, in the evaluation's normalised units.

    Mean and truth are each normalised by their own P1/P99 inside ``mask``
    (:func:`~ct2mri_node.training.metrics.normalise`); the SD is divided by the mean's P99 - P1,
    the same linear scale, so error and SD share units.
    """
    return calibration_numbers(*error_and_spread(truth, mean, sd, mask), rng)


def error_and_spread(truth: np.ndarray, mean: np.ndarray, sd: np.ndarray,
                     mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|error| and SD over the body voxels of one volume, in the evaluation's normalised units
    (see :func:`case_numbers`)."""
    from .metrics import NORMALISE_PERCENTILES, normalise

    mask = np.asarray(mask, dtype=bool)
    low, high = np.percentile(mean[mask], NORMALISE_PERCENTILES)
    scale = float(high - low) if high > low else 1.0
    error = np.abs(normalise(mean, mask) - normalise(truth, mask))[mask]
    spread = (np.asarray(sd, dtype=np.float64) / scale)[mask]
    return error, spread


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """A family's summary row: the mean over its cases of each of :data:`SUMMARY_KEYS`, plus the
    lowest Spearman and the lowest and highest +-2 SD coverage (the per-case targets' worst cases)."""
    out = {key: float(np.nanmean([r[key] for r in rows])) for key in SUMMARY_KEYS}
    out["cases"] = len(rows)
    out["spearman_min"] = float(np.nanmin([r["spearman"] for r in rows]))
    out["within_2sd_min"] = float(min(r["within_2sd"] for r in rows))
    out["within_2sd_max"] = float(max(r["within_2sd"] for r in rows))
    return out


def conformal_scale(cases: list[tuple[np.ndarray, np.ndarray]], target: float, band: float = 2.0) -> float:
    """The split-conformal scale ``k``: the smallest ``k`` with which mean +- ``band`` * k * SD
    covers ``target`` of the body voxels, each case weighing the same (the mean over cases of each
    case's covered share is at least ``target``), so one large case's voxels do not decide it.

    ``cases`` holds each calibration case's (|error|, SD) over its body voxels, in the same units.
    The score is |error| / SD (a zero SD scores 0 where the error is 0 too, else infinity). The
    level is raised to the finite-sample conformal level ``ceil((n + 1) target) / n`` with ``n``
    the smallest case's voxel count (the exchangeable unit is a voxel; with 10^5 voxels a case the
    correction is negligible). ValueError when no finite ``k`` reaches the level (too many voxels
    with an error but no spread).
    """
    if not 0 < target < 1 or band <= 0:
        raise ValueError(f"target must be in (0, 1) and band positive, got {target}, {band}")
    if not cases or any(np.asarray(e).size == 0 for e, _ in cases):
        raise ValueError("conformal_scale needs at least one case with voxels")
    n = min(np.asarray(e).size for e, _ in cases)
    level = min(1.0, math.ceil((n + 1) * target) / n)
    scores, weights = [], []
    for error, spread in cases:
        error, spread = np.abs(np.asarray(error, dtype=np.float64)), np.asarray(spread, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(spread > 0, error / spread, np.where(error > 0, np.inf, 0.0))
        scores.append(score)
        weights.append(np.full(score.size, 1.0 / (score.size * len(cases))))
    score, weight = np.concatenate(scores), np.concatenate(weights)
    order = np.argsort(score, kind="stable")
    cumulative = np.cumsum(weight[order])
    at = int(np.searchsorted(cumulative, level - 1e-12))
    if at >= score.size or not np.isfinite(score[order[at]]):
        raise ValueError(f"no finite scale covers {level:.3f} of the voxels: too many have an error but zero SD")
    return float(score[order[at]] / band)
