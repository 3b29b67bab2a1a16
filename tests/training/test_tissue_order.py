"""Tissue-order score and body correlation on cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.training import heldout, tissues
from ct2mri_node.training.phantoms import PhantomCase
from ct2mri_node.training.tissue_order import (
    MIN_INTERIOR_VOXELS,
    SOFT_TISSUES,
    body_correlation,
    erode,
    tissue_order,
)


@pytest.fixture(scope="module")
def head() -> PhantomCase:
    return heldout.generate_case("adult_head", 5)


@pytest.fixture(scope="module")
def pelvis() -> PhantomCase:
    return heldout.generate_case("pelvis", 6)


def _order(prediction: np.ndarray, case: PhantomCase) -> dict:
    return tissue_order(prediction, case.labels, case.label_names, case.mask)


def test_perfect_prediction_scores_one(head: PhantomCase, pelvis: PhantomCase) -> None:
    for case in (head, pelvis):
        result = _order(case.mr, case)
        assert result["score"] == 1.0 and result["failed"] == []
        assert result["held"] == result["total"] == len(result["checks"]) >= 7
        assert body_correlation(case.mr, case.mr, case.mask) == pytest.approx(1.0)
        assert body_correlation(case.mr, 3.0 * case.mr + 50.0, case.mask) == pytest.approx(1.0)


def test_inverted_mr_scores_low(head: PhantomCase, pelvis: PhantomCase) -> None:
    for case in (head, pelvis):
        inverted = case.mr.max() - case.mr
        assert _order(inverted, case)["score"] <= 0.2
        assert body_correlation(case.mr, inverted, case.mask) == pytest.approx(-1.0)


def test_ct_like_mapping_fails_exactly_the_checks_it_should(head: PhantomCase, pelvis: PhantomCase) -> None:
    """CT as a 'synthetic MR': bone bright, fat dark, grey above white; CSF, urine and gas stay dark."""
    for case in (head, pelvis):
        result = _order(case.ct, case)
        failed = set(result["failed"])
        present = {c["brighter"] for c in result["checks"]} | {c["darker"] for c in result["checks"]}
        expected = {f"{soft} > {tissues.CORTICAL_BONE}" for soft in SOFT_TISSUES if soft in present}
        expected.add(f"{tissues.FAT} > {tissues.MUSCLE}")
        if tissues.WHITE_MATTER in present:
            expected.add(f"{tissues.WHITE_MATTER} > {tissues.GREY_MATTER}")
        assert failed == expected
        assert f"{tissues.CORTICAL_BONE}" in present
        assert 0.0 < result["score"] < 1.0


def _toy() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Fat block with a muscle block inside; a thin sheet of cortical bone; all inside the mask."""
    labels = np.zeros((12, 14, 14), np.uint8)
    labels[1:-1, 1:-1, 1:-1] = 1  # fat
    labels[3:9, 3:9, 3:9] = 2  # muscle: 4x4x4 = 64 interior voxels
    labels[2:10, 11, 2:12] = 3  # bone: a one-voxel sheet, no interior
    return labels, np.ones(labels.shape, bool), {0: tissues.AIR, 1: tissues.FAT, 2: tissues.MUSCLE,
                                                 3: tissues.CORTICAL_BONE}


def test_tissues_with_too_few_interior_voxels_are_skipped() -> None:
    labels, mask, names = _toy()
    prediction = np.choose(labels, [0.0, 900.0, 400.0, 5000.0]).astype(np.float32)  # bone bright: wrong
    result = tissue_order(prediction, labels, names, mask)
    assert [(c["brighter"], c["darker"]) for c in result["checks"]] == [(tissues.FAT, tissues.MUSCLE)]
    assert result["score"] == 1.0 and result["checks"][0]["brighter_median"] == 900.0
    small = labels.copy()
    small[small == 2] = 1
    small[4:7, 4:7, 4:7] = 2  # one interior voxel of muscle
    assert erode(small == 2).sum() == 1 < MIN_INTERIOR_VOXELS
    none = tissue_order(prediction, small, names, mask)
    assert none["total"] == 0 and none["score"] is None and none["failed"] == []


def test_interior_must_lie_inside_the_mask_and_edges_are_not_interior() -> None:
    labels, mask, names = _toy()
    prediction = np.choose(labels, [0.0, 900.0, 400.0, 50.0]).astype(np.float32)
    mask[:, :, :6] = False  # muscle keeps 2 of its 4 interior columns: 32 voxels, below the minimum
    assert tissue_order(prediction, labels, names, mask)["total"] == 0
    full = np.ones((4, 4, 4), bool)
    assert erode(full).sum() == 8  # the 2x2x2 core; the volume's edge counts as outside


def test_body_correlation_edge_cases() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((6, 7, 8)).astype(np.float32)
    mask = np.zeros(a.shape, bool)
    mask[1:5, 1:6, 1:7] = True
    b = np.where(mask, a, 99.0)  # outside differences do not count
    assert body_correlation(a, b, mask) == pytest.approx(1.0)
    assert body_correlation(a, np.full(a.shape, 2.0), mask) == 0.0
    assert math.isfinite(body_correlation(a, rng.random(a.shape), mask))
    with pytest.raises(DataError, match="mask is empty"):
        body_correlation(a, b, np.zeros_like(mask))
    with pytest.raises(DataError, match="same shape"):
        body_correlation(a, b[:-1], mask[:-1])
    with pytest.raises(DataError, match="same shape"):
        tissue_order(a, np.zeros(a.shape[:-1], np.uint8), {0: tissues.AIR}, mask)
