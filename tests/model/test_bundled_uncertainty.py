"""The bundled model's uncertainty map on CT it never saw: does it rank the errors, and does its
calibrated +-2 SD band cover the truth (issue 23)?

The map is k x (SD + s0): SD across 2 samples (the plain translation and its left-right
test-time flip, ``model/uncertainty.py``), the floor s0 and conformal scale k from the model
card's ``uncertainty`` section (set on calibration cases of the training families, ``benchmarks/
uncertainty_calibration.py calibrate``). The case comes from ``training.independent``, the
evaluation-only generator, with a seed no other test or table uses (7201+). Targets, per case:

- Spearman(SD, |error|) >= 0.3 (the map points at the voxels that are wrong);
- mean +- 2 SD covers 80-99 % of the body voxels (neither over- nor under-confident).

Errors and SD are in the evaluation's normalised units (``training/calibration.error_and_spread``).
A target the bundled model misses is a strict expected failure with the measured numbers
(:data:`KNOWN_GAPS`): a model that meets it must take it off the list.
"""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.model.checkpoint import load_checkpoint
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.training import independent
from ct2mri_node.training.calibration import case_numbers

SAMPLES = 2
MIN_SPEARMAN = 0.3
COVERAGE_2SD = (0.80, 0.99)
CASES_RUN = [("small_head", 7201)]
#: Cases the bundled model misses a target on, with the numbers this test measured.
KNOWN_GAPS: dict[tuple[str, int], str] = {
    ("small_head", 7201): "Spearman 0.209 (bar 0.3), +-2 x map covers 0.889 (in range): two flips barely see "
                          "where a small head's contrast is wrong",
}
CASES = [pytest.param(kind, seed, marks=pytest.mark.xfail(strict=True, reason=f"model 0.3.2: {KNOWN_GAPS[kind, seed]}"))
         if (kind, seed) in KNOWN_GAPS else pytest.param(kind, seed) for kind, seed in CASES_RUN]


def test_bundled_card_is_calibrated_for_the_maps_settings() -> None:
    card = load_checkpoint("bundled").card
    section = card.uncertainty
    assert section["samples"] == SAMPLES and section["steps"] == card.sampling["default_steps"]
    assert section["k"] > 0 and section["target_coverage"] == 0.9 and section["band_sd"] == 2.0
    families = {case["family"] for case in section["cases"]}
    assert families and families <= {"phantom", "randomised", "icbm"}   # never an evaluation family
    assert all(case["seed"] >= 6000 for case in section["cases"])        # training used 1000-3023
    translator = Translator("bundled", TranslationSettings(samples=SAMPLES, device="cpu"))
    assert translator.calibration.calibrated and translator.calibration.matches
    assert translator.calibration.scale == section["k"]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_bundled_uncertainty_ranks_the_errors_and_covers_the_truth(kind: str, seed: int) -> None:
    case = independent.generate_case(kind, seed)
    result = Translator("bundled", TranslationSettings(samples=SAMPLES, device="cpu")).translate(case.ct, case.spacing)
    assert result.uncertainty is not None and result.calibration.matches
    numbers = case_numbers(case.mr, result.mr.astype(np.float32), result.uncertainty, case.mask,
                           np.random.default_rng(0))
    print(f"{kind} {seed}: Spearman {numbers['spearman']:.3f}, +-1 SD {numbers['within_1sd']:.3f}, "
          f"+-2 SD {numbers['within_2sd']:.3f}, top-10 % share {numbers['top10_share']:.3f}")
    assert numbers["spearman"] >= MIN_SPEARMAN
    assert COVERAGE_2SD[0] <= numbers["within_2sd"] <= COVERAGE_2SD[1]
