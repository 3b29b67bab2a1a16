"""The bundled model on CT it never saw: held-out cases of each anatomy keep T1w tissue order.

Cases come from ``training.heldout``, a generator no training case comes from, with seeds that
neither training nor the choice of the default step count used (the README's table uses seeds
9000+, the step count was chosen on 8000+). A change to the weights, the pre- or post-processing
or the sampler that breaks the output (tissue order wrong, blotches) fails here.

Floors: see README ("Evidence"); they sit well below what the bundled model reaches on every
held-out case and well above what broken outputs score (an inverted MR: tissue order 0.0; the
first release's model: correlation ~0.2).
"""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.model.checkpoint import BUNDLED_DIR, WEIGHTS, load_checkpoint
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.training import heldout
from ct2mri_node.training.metrics import compare
from ct2mri_node.training.tissue_order import body_correlation, tissue_order

#: Floors for the bundled model on one held-out case (default settings, CPU).
MIN_TISSUE_ORDER = 0.75
MIN_CORRELATION = 0.4


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator("bundled", TranslationSettings(device="cpu"))


def test_bundled_model_is_the_documented_demo() -> None:
    card = load_checkpoint("bundled").card
    assert card.architecture == "enhanced" and card.sampling["method"] == "refine"
    assert card.spacing_mm == (2.0, 2.0, 2.0)
    assert "not on patients" in card.description and "randomised" in card.training_data
    assert "icbm: " in card.training_data and "heldout: " not in card.training_data  # no held-out case trained on
    assert (BUNDLED_DIR / WEIGHTS).stat().st_size <= 20 * 2**20
    assert {"ssim", "psnr", "mae", "tissue_order", "correlation"} <= set(card.evaluation)


@pytest.mark.slow
@pytest.mark.parametrize("kind", heldout.KINDS)
def test_bundled_model_keeps_tissue_order_on_an_unseen_generator(translator: Translator, kind: str) -> None:
    case = heldout.generate_case(kind, seed=7001)
    result = translator.translate(case.ct, case.spacing)
    mr = result.mr.astype(np.float32)
    assert case.labels is not None
    order = tissue_order(mr, case.labels, case.label_names, case.mask)
    correlation = body_correlation(case.mr, mr, case.mask)
    scores = compare(case.mr, mr, case.mask)
    print(f"{kind}: tissue order {order['held']}/{order['total']} failed {order['failed']}, r {correlation:.3f}, "
          f"SSIM {scores.ssim:.3f}, PSNR {scores.psnr:.2f}, MAE {scores.mae:.4f}")
    assert order["score"] is not None and order["score"] >= MIN_TISSUE_ORDER, order["failed"]
    assert correlation >= MIN_CORRELATION
