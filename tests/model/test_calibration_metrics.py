"""The uncertainty map's calibration numbers (ct2mri_node/training/calibration.py) on synthetic
arrays whose answer is known: a perfectly ranked SD, a Gaussian error drawn with the stated SD,
an SD unrelated to the error, and the unit conversion of a whole volume (issue 23, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.training.calibration import (
    calibration_numbers,
    case_numbers,
    conformal_scale,
    coverage,
    spearman,
    summarise,
    top_share,
)

N = 100_000


def test_a_perfectly_ranked_sd_gives_spearman_1_and_finds_every_top_error() -> None:
    rng = np.random.default_rng(1)
    error = rng.exponential(0.1, N)
    spread = 0.5 * np.sqrt(error) + 0.01          # monotone in the error, not proportional
    assert spearman(spread, error) == pytest.approx(1.0, abs=1e-12)
    assert top_share(error, spread) == pytest.approx(1.0, abs=1e-12)
    # reversed ranking: the map points at the best voxels instead
    assert spearman(-spread, error) == pytest.approx(-1.0, abs=1e-12)
    assert top_share(error, -spread) == pytest.approx(0.0, abs=1e-12)


def test_a_gaussian_error_with_the_true_sd_is_covered_68_and_95_percent() -> None:
    rng = np.random.default_rng(2)
    spread = rng.uniform(0.01, 0.2, N)            # a different true SD in every voxel
    error = np.abs(rng.normal(0.0, spread))
    assert coverage(error, spread, 1.0) == pytest.approx(0.6827, abs=0.01)
    assert coverage(error, spread, 2.0) == pytest.approx(0.9545, abs=0.005)
    # an SD half the truth is over-confident, twice the truth under-confident
    assert coverage(error, spread / 2, 2.0) == pytest.approx(0.6827, abs=0.01)
    assert coverage(error, spread * 2, 1.0) == pytest.approx(0.9545, abs=0.005)
    numbers = calibration_numbers(error, spread, np.random.default_rng(0))
    assert numbers["median_error_over_sd"] == pytest.approx(0.6745, abs=0.02)
    # a true SD ranks its errors only loosely (|N(0, s)| is wide), but clearly above chance
    assert 0.2 < numbers["spearman"] < 0.7 and numbers["top10_share"] > 0.2


def test_an_sd_unrelated_to_the_error_is_at_chance() -> None:
    rng = np.random.default_rng(3)
    error = rng.exponential(0.1, N)
    spread = rng.uniform(0.0, 0.2, N)
    assert top_share(error, spread) == pytest.approx(0.1, abs=0.01)
    assert spearman(spread, error) == pytest.approx(0.0, abs=0.02)


def test_ties_at_the_cut_are_split_so_a_flat_map_scores_exactly_chance() -> None:
    """A constant SD (or one with zero everywhere but a few voxels) cannot pick voxels by their order."""
    error = np.linspace(0.0, 1.0, 1000)           # the largest errors come last
    assert top_share(error, np.full(1000, 0.05)) == pytest.approx(0.1, abs=1e-12)
    assert top_share(error, np.zeros(1000)) == pytest.approx(0.1, abs=1e-12)
    assert np.isnan(spearman(np.zeros(1000), error))
    # 50 voxels of the top 100 errors flagged, the rest of the map flat: 50 certain + 50 of 950 by chance
    spread = np.zeros(1000)
    spread[-50:] = 1.0
    assert top_share(error, spread) == pytest.approx((50 + 50 * 50 / 950) / 100, abs=1e-12)


def test_case_numbers_put_error_and_sd_in_the_same_normalised_units() -> None:
    """A volume in MR units (range ~1000) whose truth is the mean plus Gaussian noise of the stated SD."""
    rng = np.random.default_rng(4)
    shape = (24, 48, 48)
    mask = np.zeros(shape, bool)
    mask[2:22, 4:44, 4:44] = True
    mean = rng.uniform(100.0, 1100.0, shape).astype(np.float32)
    sd = rng.uniform(5.0, 40.0, shape).astype(np.float32)
    truth = (mean + rng.normal(0.0, sd)).astype(np.float32)
    numbers = case_numbers(truth, mean, sd, mask, np.random.default_rng(0))
    assert numbers["voxels"] == int(mask.sum())
    assert numbers["within_1sd"] == pytest.approx(0.68, abs=0.03)
    assert numbers["within_2sd"] == pytest.approx(0.95, abs=0.02)
    assert numbers["mean_sd"] == pytest.approx(float(sd[mask].mean()) / 1000.0, rel=0.05)
    # the same truth judged against an SD in the wrong units (not divided by the range) covers all
    assert case_numbers(truth, mean, sd * 1000, mask, np.random.default_rng(0))["within_1sd"] > 0.99


def test_summary_row_is_the_mean_and_the_worst_case_of_a_family() -> None:
    rows = [{"spearman": s, "within_1sd": c / 2, "within_2sd": c, "top10_share": t, "median_error_over_sd": 1.0,
             "mean_sd": 0.1, "mae": 0.2, "zero_sd_share": 0.0}
            for s, c, t in ((0.1, 0.6, 0.2), (0.5, 0.9, 0.4))]
    summary = summarise(rows)
    assert summary["cases"] == 2
    assert summary["spearman"] == pytest.approx(0.3) and summary["top10_share"] == pytest.approx(0.3)
    assert summary["spearman_min"] == pytest.approx(0.1)
    assert (summary["within_2sd_min"], summary["within_2sd_max"]) == pytest.approx((0.6, 0.9))


def test_top_share_refuses_arrays_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="one size"):
        top_share(np.ones(10), np.ones(9))
    with pytest.raises(ValueError, match="one size"):
        top_share(np.ones((10, 2)), np.ones((10, 2)))
    with pytest.raises(ValueError, match="fraction"):
        top_share(np.ones(10), np.ones(10), fraction=0.0)


def test_conformal_scale_makes_the_band_cover_the_target_with_equal_weight_per_case() -> None:
    rng = np.random.default_rng(4)
    # an SD 3x too small for a Gaussian error: k must be about 3 for +-2 SD to cover 95 %
    sd = rng.uniform(0.5, 1.5, N)
    error = np.abs(rng.normal(0.0, 3.0 * sd))
    k = conformal_scale([(error, sd)], 0.95)
    assert k == pytest.approx(3.0, rel=0.03)
    assert coverage(error, k * sd, 2.0) == pytest.approx(0.95, abs=2e-3)
    # two cases, a big one that needs k 1 and a small one (a tenth of the voxels) that needs k 5:
    # each case weighs the same, so the mean of the per-case coverages is the target (not the
    # pooled voxel share, which the big case alone would decide)
    big_sd, small_sd = rng.uniform(0.5, 1.5, N), rng.uniform(0.5, 1.5, N // 10)
    big = (np.abs(rng.normal(0.0, big_sd)), big_sd)
    small = (np.abs(rng.normal(0.0, 5.0 * small_sd)), small_sd)
    k = conformal_scale([big, small], 0.8)
    mean_cover = np.mean([coverage(e, k * s, 2.0) for e, s in (big, small)])
    assert mean_cover == pytest.approx(0.8, abs=2e-3)
    pooled = np.mean(np.concatenate([e <= 2.0 * k * s for e, s in (big, small)]))
    assert pooled > 0.85
    # a zero SD with an error cannot be covered by any k; with no error it is covered
    with pytest.raises(ValueError, match="no finite scale"):
        conformal_scale([(np.ones(100), np.zeros(100))], 0.9)
    assert conformal_scale([(np.zeros(100), np.zeros(100))], 0.9) == 0.0
