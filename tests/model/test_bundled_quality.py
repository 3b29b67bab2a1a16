"""The bundled model on CT it never saw: a planner could contour on it.

Cases come from ``training.independent``, an evaluation-only generator whose shape language is
unlike every training family (plain ellipsoid blocks, thick skull shells, large ventricles and
bladders, femoral heads of marrow inside cortex, no texture, 5-15 HU of CT noise, 0.8-3 mm
pixels, 1-3 mm slices), with seeds that neither training nor the ablation used (the evidence
tables of docs/model.md use 5000+, this test 7100+). Three cases of each anatomy, each held to every check:

- every pairwise T1w check (``tissue_checks.t1w_checks``): fluids darker than grey matter and
  muscle, marrow brighter than muscle, bone and air darker than every soft tissue, white > grey >
  CSF, fat > muscle > urine; a fraction of checks passing is not a pass;
- correlation with the true T1w inside the body >= 0.85 (an inverted CT gets 0.44-0.75 here);
- uniformity >= 3 (|mean(white) - mean(grey)| and |mean(muscle) - mean(fat)| over the SD inside
  the big tissue; blotches and tiles lower it);
- seam ratio <= 1.3 (gradients on the planes where sliding-window patches meet against elsewhere).

Model 0.2.0 failed it on every case (bright CSF, urine and eyes, dark marrow; see the README).
Model 0.3.2 passes eight of the nine cases (every pelvis and adult head, two small heads), holds
every T1w check on all but one case, and fails the cases in :data:`KNOWN_GAPS` (issue 20 stays open): those are strict expected
failures, so a model that passes one must take it off the list.
"""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.model.checkpoint import BUNDLED_DIR, WEIGHTS, load_checkpoint
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.training import independent
from ct2mri_node.training.tissue_checks import case_checks
from ct2mri_node.training.tissue_order import body_correlation

SEEDS = (7101, 7102, 7103)
MIN_CORRELATION = 0.85
MIN_UNIFORMITY = 3.0
MAX_SEAM_RATIO = 1.3
#: Cases model 0.3.2 still fails, and why (measured with this test at the default overlap 0.5;
#: docs/model.md "Evidence"). Model 0.3.1 also failed the three adult heads (r 0.840-0.843; on
#: 7103 the eye not darker than grey matter); model 0.3.0 also failed small heads 7101-7103 (CSF
#: not darker than muscle) and the three adult heads' diploe marrow (not brighter than muscle).
KNOWN_GAPS: dict[tuple[str, int], str] = {
    ("small_head", 7103): "CSF not darker than muscle; r 0.844 (bar 0.85)",
}
CASES = [pytest.param(kind, seed, marks=pytest.mark.xfail(strict=True, reason=f"model 0.3.2: {KNOWN_GAPS[kind, seed]}"))
         if (kind, seed) in KNOWN_GAPS else pytest.param(kind, seed)
         for kind in independent.KINDS for seed in SEEDS]


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator("bundled", TranslationSettings(device="cpu"))


def test_bundled_model_is_the_documented_demo() -> None:
    card = load_checkpoint("bundled").card
    assert card.architecture == "enhanced" and card.sampling["method"] == "refine"
    assert card.spacing_mm == (2.0, 2.0, 2.0)
    assert card.network["norm"] == "batch" and card.network["ct_channels"] == 4
    assert card.intensity["mr"]["name"] == "fat"
    assert "not on patients" in card.description and "randomised" in card.training_data
    assert "independent" not in card.training_data and "heldout" not in card.training_data
    assert (BUNDLED_DIR / WEIGHTS).stat().st_size <= 20 * 2**20
    for family in ("independent", "heldout"):
        assert {"t1w_all_held", "correlation_min", "uniformity_min", "seam_ratio_max"} <= set(
            card.evaluation[family])


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_bundled_model_on_the_independent_generator(translator: Translator, kind: str, seed: int) -> None:
    case = independent.generate_case(kind, seed)
    result = translator.translate(case.ct, case.spacing)
    mr = result.mr.astype(np.float32)
    assert case.labels is not None
    checks = case_checks(mr, case.mr, case.labels, case.label_names, case.mask, result.window_edges)
    correlation = body_correlation(case.mr, mr, case.mask)
    uniformity, seams = checks["uniformity"]["min"], checks["seam_ratio"]
    print(f"{kind} {seed}: T1w {checks['t1w']['held']}/{checks['t1w']['total']} failed {checks['t1w']['failed']}, "
          f"r {correlation:.3f}, uniformity {uniformity}, seam ratio {seams}")
    assert checks["t1w"]["all_held"], checks["t1w"]["failed"]
    assert correlation >= MIN_CORRELATION
    assert uniformity is not None and uniformity >= MIN_UNIFORMITY
    assert seams is not None and seams <= MAX_SEAM_RATIO
