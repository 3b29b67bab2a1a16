"""Tissue checks on real independent cases: the truth passes every one, and each can fail.

Negative controls: bright CSF and urine, dark marrow, an inverted MR, a bright half bladder (a
median would hide it), tiles of offsets (seams), blotchy white matter (uniformity).
"""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.training import independent, tissues
from ct2mri_node.training.phantoms import PhantomCase, random_field
from ct2mri_node.training.tissue_checks import (
    T1W_CHECKS,
    case_checks,
    interior_region,
    seam_differences,
    seam_ratio,
    t1w_checks,
    tissue_interiors,
    uniformity,
)
from ct2mri_node.training.tissue_order import body_correlation, tissue_order

TILE = 16


@pytest.fixture(scope="module")
def cases() -> dict[str, PhantomCase]:
    return {kind: independent.generate_case(kind, 11) for kind in independent.KINDS}


def _edges(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Planes between 16-voxel tiles: p = k - 0.5 for k = 16, 32, ..."""
    return [np.arange(TILE, n, TILE) - 0.5 for n in shape]


def _checks(case: PhantomCase, synthetic: np.ndarray, edges: list[np.ndarray] | None = None) -> dict:
    assert case.labels is not None
    return case_checks(synthetic, case.mr, case.labels, case.label_names, case.mask,
                       _edges(case.mr.shape) if edges is None else edges)


def _with(case: PhantomCase, name: str, value: float | np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """The true MR with tissue ``name`` painted ``value`` (inside ``where`` only, when given)."""
    assert case.labels is not None
    label = next(label for label, n in case.label_names.items() if n == name)
    out = case.mr.copy()
    region = case.labels == label if where is None else (case.labels == label) & where
    out[region] = value if np.isscalar(value) else value[region]
    return out


def test_true_mr_passes_every_check(cases: dict[str, PhantomCase]) -> None:
    for kind, case in cases.items():
        result = _checks(case, case.mr)
        t1w = result["t1w"]
        assert t1w["all_held"] is True and t1w["failed"] == [] and t1w["held"] == t1w["total"] >= 7, (kind, t1w)
        assert result["uniformity"]["min"] >= 3.0, (kind, result["uniformity"])
        assert result["seam_ratio"] == pytest.approx(1.0, abs=0.05), kind
        for row in result["tissue_table"].values():
            assert row["synthetic_mean"] == row["true_mean"] and row["voxels"] >= 50
    assert {(tissues.WHITE_MATTER, tissues.GREY_MATTER), (tissues.GREY_MATTER, tissues.CSF),
            (tissues.MUSCLE, tissues.CSF), (tissues.FAT, tissues.MUSCLE), (tissues.GREY_MATTER, tissues.EYE),
            (tissues.WHITE_MATTER, tissues.AIR)} <= _applied(cases["adult_head"])
    assert {(tissues.MUSCLE, tissues.URINE), (tissues.MARROW, tissues.MUSCLE), (tissues.FAT, tissues.MUSCLE),
            (tissues.ORGAN, tissues.CORTICAL_BONE)} <= _applied(cases["pelvis"])


def _applied(case: PhantomCase) -> set[tuple[str, str]]:
    """The (brighter, darker) checks that apply to a case."""
    means = {name: row["true_mean"] for name, row in _checks(case, case.mr)["tissue_table"].items()}
    return {(c["brighter"], c["darker"]) for c in t1w_checks(means)["checks"]}


def test_check_list_is_the_issue_s_full_set() -> None:
    pairs = set(T1W_CHECKS)
    assert len(pairs) == len(T1W_CHECKS)
    for fluid in (tissues.CSF, tissues.URINE, tissues.EYE):
        assert {(tissues.GREY_MATTER, fluid), (tissues.MUSCLE, fluid)} <= pairs
    for dark in (tissues.CORTICAL_BONE, tissues.AIR, tissues.GAS):
        for soft in (tissues.FAT, tissues.MUSCLE, tissues.GREY_MATTER, tissues.WHITE_MATTER, tissues.MARROW,
                     tissues.ORGAN, tissues.SKIN):
            assert (soft, dark) in pairs
    assert {(tissues.WHITE_MATTER, tissues.GREY_MATTER), (tissues.MARROW, tissues.MUSCLE),
            (tissues.FAT, tissues.MUSCLE)} <= pairs
    assert t1w_checks({})["all_held"] is None and t1w_checks({})["total"] == 0
    equal = t1w_checks({tissues.FAT: 5.0, tissues.MUSCLE: 5.0})  # strictly greater
    assert equal["all_held"] is False and equal["failed"] == ["fat > muscle"]


def test_bright_fluids_and_dark_marrow_fail(cases: dict[str, PhantomCase]) -> None:
    head, pelvis = cases["adult_head"], cases["pelvis"]
    fat = head.info["t1w"][tissues.FAT]
    bright_csf = _checks(head, _with(head, tissues.CSF, 1.2 * fat))["t1w"]
    assert bright_csf["all_held"] is False
    assert {"grey_matter > csf", "muscle > csf"} <= set(bright_csf["failed"])
    bright_eye = _checks(head, _with(head, tissues.EYE, 0.8 * fat))["t1w"]
    assert bright_eye["failed"] == ["grey_matter > eye", "muscle > eye"]
    bright_urine = _checks(pelvis, _with(pelvis, tissues.URINE, 1.1 * fat))["t1w"]
    assert bright_urine["failed"] == ["muscle > urine"] and bright_urine["all_held"] is False
    muscle = pelvis.info["t1w"][tissues.MUSCLE]
    dark_marrow = _checks(pelvis, _with(pelvis, tissues.MARROW, 0.8 * muscle))["t1w"]
    assert dark_marrow["failed"] == ["marrow > muscle"]
    bright_bone = _checks(pelvis, _with(pelvis, tissues.CORTICAL_BONE, 0.95 * fat))["t1w"]
    assert "fat > cortical_bone" not in bright_bone["failed"] and "muscle > cortical_bone" in bright_bone["failed"]


def test_inverted_mr_and_ct_like_images_fail(cases: dict[str, PhantomCase]) -> None:
    for kind, case in cases.items():
        inverted = _checks(case, case.mr.max() - case.mr)["t1w"]
        assert inverted["all_held"] is False and inverted["held"] <= 0.25 * inverted["total"], kind
        assert not _checks(case, case.ct)["t1w"]["all_held"], kind  # bone bright, fat dark
    # An inverted CT in a soft-tissue window: fat bright, bone dark, but fluids bright and marrow dark.
    pelvis = cases["pelvis"]
    inverted_ct = -np.clip(pelvis.ct, -160.0, 240.0)
    failed = set(_checks(pelvis, inverted_ct)["t1w"]["failed"])
    assert {"muscle > urine", "marrow > muscle"} <= failed and "fat > muscle" not in failed


def test_means_catch_what_medians_hide(cases: dict[str, PhantomCase]) -> None:
    """A bladder bright in 40 % of its volume: its median stays dark, its mean does not."""
    pelvis = cases["pelvis"]
    assert pelvis.labels is not None
    urine = pelvis.labels == independent.URINE
    z = np.nonzero(urine.any(axis=(1, 2)))[0]
    cut = int(np.percentile(np.repeat(np.arange(urine.shape[0]), urine.sum(axis=(1, 2))), 60))
    top = np.zeros(urine.shape, bool)
    top[cut:] = True
    assert z.size and 0.3 < (urine & top).sum() / urine.sum() < 0.5
    synthetic = _with(pelvis, tissues.URINE, 3.0 * pelvis.info["t1w"][tissues.FAT], top)
    median_order = tissue_order(synthetic, pelvis.labels, pelvis.label_names, pelvis.mask)
    assert "muscle > urine" not in median_order["failed"]
    assert "muscle > urine" in _checks(pelvis, synthetic)["t1w"]["failed"]


def test_blotchy_white_matter_has_low_uniformity(cases: dict[str, PhantomCase]) -> None:
    head = cases["adult_head"]
    info = head.info["t1w"]
    contrast = info[tissues.WHITE_MATTER] - info[tissues.GREY_MATTER]
    blotches = random_field(np.random.default_rng(0), head.mr.shape, head.spacing, 25.0)
    blotchy = _with(head, tissues.WHITE_MATTER, head.mr + 0.6 * contrast * blotches)
    result = _checks(head, blotchy)
    assert result["uniformity"]["white_matter_vs_grey_matter"] < 3.0
    assert result["uniformity"]["min"] == result["uniformity"]["white_matter_vs_grey_matter"]
    assert result["t1w"]["all_held"] is True  # the order alone would not see it
    assert result["tissue_table"][tissues.WHITE_MATTER]["synthetic_sd"] > 5 * result["tissue_table"][
        tissues.WHITE_MATTER]["true_sd"]
    # CT-like contrast: 12 HU between white and grey matter over the CT noise.
    ct_like = uniformity(-head.ct, tissue_interiors(head.labels, head.label_names, head.mask))
    assert ct_like["white_matter_vs_grey_matter"] < 3.0


def test_tiles_of_offsets_raise_the_seam_ratio(cases: dict[str, PhantomCase]) -> None:
    for kind, case in cases.items():
        tiles = np.indices(case.mr.shape) // TILE
        rng = np.random.default_rng(1)
        offsets = rng.normal(0.0, 0.08, size=tuple(int(t.max()) + 1 for t in tiles)).astype(np.float32)
        tiled = case.mr * (1.0 + offsets[tiles[0], tiles[1], tiles[2]])
        result = _checks(case, tiled)
        assert result["seam_ratio"] > 1.3, (kind, result["seam_ratio"])
        assert _checks(case, case.mr)["seam_ratio"] < 1.1
        # Edges that are not where the tiles meet see no seams.
        shifted = [e + TILE / 2 for e in _edges(case.mr.shape)]
        assert _checks(case, tiled, shifted)["seam_ratio"] < 1.15, kind


def test_seam_ratio_on_plain_images() -> None:
    rng = np.random.default_rng(2)
    shape = (40, 48, 56)
    smooth = 100.0 + rng.normal(0.0, 5.0, shape).astype(np.float32)
    region = np.ones(shape, bool)
    edges = _edges(shape)
    assert seam_ratio(smooth, region, edges) == pytest.approx(1.0, abs=0.05)
    tiles = np.indices(shape) // TILE
    checker = ((tiles[0] + tiles[1] + tiles[2]) % 2).astype(np.float32)
    tiled = smooth + 20.0 * checker
    assert seam_ratio(tiled, region, edges) > 1.3
    assert seam_ratio(checker, region, edges) == 1000.0  # flat elsewhere: capped, still JSON
    # Differences that cross a tissue boundary never count: two tissues meeting at the edges.
    two = np.where(tiles[2] % 2 == 0, 1, 2)
    assert seam_ratio(smooth + 50.0 * (two == 2), two, [[], [], edges[2]]) == pytest.approx(1.0, abs=0.1)
    assert seam_ratio(smooth, region, [[], [], []]) is None
    assert seam_ratio(smooth, np.zeros(shape, bool), edges) is None
    with pytest.raises(DataError, match="same shape"):
        seam_ratio(smooth, region[:-1], edges)
    with pytest.raises(DataError, match="one list"):
        seam_ratio(smooth, region, edges[:2])


def test_seam_differences_follow_the_documented_convention() -> None:
    assert np.nonzero(seam_differences(40, [15.5], width=0.0))[0].tolist() == [15]  # voxels 15 | 16
    assert np.nonzero(seam_differences(40, [15.5]))[0].tolist() == [14, 15, 16]
    assert np.nonzero(seam_differences(40, [10.2]))[0].tolist() == [9, 10, 11]
    assert np.nonzero(seam_differences(40, [10.0], width=0.0))[0].tolist() == [9, 10]
    assert np.nonzero(seam_differences(40, [0.5, 38.5]))[0].tolist() == [0, 1, 37, 38]
    assert seam_differences(1, [0.5]).size == 0


def test_interiors_region_and_correlation_agree(cases: dict[str, PhantomCase]) -> None:
    case = cases["small_head"]
    assert case.labels is not None
    interiors = tissue_interiors(case.labels, case.label_names, case.mask)
    region = interior_region(interiors)
    assert set(np.unique(region)) == set(range(len(interiors) + 1))
    assert all(interior.sum() >= 50 for interior in interiors.values())
    assert body_correlation(case.mr, case.mr, case.mask) == pytest.approx(1.0)
    with pytest.raises(DataError, match="same shape"):
        case_checks(case.mr[:-1], case.mr, case.labels, case.label_names, case.mask)
