"""Independent evaluation generator: interface, determinism, grid and noise ranges, tissue values, evaluation only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.training import heldout, independent, prepared, tissues
from ct2mri_node.training.families import (
    EVALUATION_FAMILIES,
    TRAINING_FAMILIES,
    family,
    write_family,
)
from ct2mri_node.training.pairs import list_cases, load_case, load_labels
from ct2mri_node.training.phantoms import PhantomCase
from ct2mri_node.training.tissue_order import MIN_INTERIOR_VOXELS, erode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # generator_checks, next to this file
from generator_checks import interior_medians

SMALL = {"shape": (16, 40, 40), "spacing": (5.0, 5.0, 5.0)}
#: Tissues each kind must show with enough interior for the T1w checks and the uniformity.
NEEDED = {
    "small_head": {tissues.GREY_MATTER, tissues.WHITE_MATTER, tissues.CSF, tissues.FAT, tissues.MUSCLE,
                   tissues.CORTICAL_BONE},
    "adult_head": {tissues.GREY_MATTER, tissues.WHITE_MATTER, tissues.CSF, tissues.FAT, tissues.MUSCLE,
                   tissues.CORTICAL_BONE, tissues.MARROW, tissues.EYE, tissues.AIR},
    "pelvis": {tissues.FAT, tissues.MUSCLE, tissues.URINE, tissues.MARROW, tissues.ORGAN, tissues.CORTICAL_BONE},
}
SEEDS = range(4)


@pytest.fixture(scope="module")
def cases() -> dict[tuple[str, int], PhantomCase]:
    """Four default cases per kind (a few tenths of a second each)."""
    return {(kind, seed): independent.generate_case(kind, seed) for kind in independent.KINDS for seed in SEEDS}


def _interior_counts(case: PhantomCase) -> dict[str, int]:
    assert case.labels is not None
    return {name: int((erode(case.labels == label) & case.mask).sum()) for label, name in case.label_names.items()}


def test_interface_and_evaluation_only_registration() -> None:
    assert independent.KINDS == ("small_head", "adult_head", "pelvis")
    assert family("independent") is independent
    assert "independent" not in TRAINING_FAMILIES and {"independent", "heldout"} <= set(EVALUATION_FAMILIES)
    # Training refuses every evaluation family, and only those.
    assert set(prepared.EVALUATION_FAMILIES) == set(EVALUATION_FAMILIES)
    for name in EVALUATION_FAMILIES:
        with pytest.raises(DataError, match="evaluation only"):
            prepared.check_training_family(f"a {name} case", name)
    for name in TRAINING_FAMILIES:
        prepared.check_training_family(f"a {name} case", name)
    # Its random numbers are its own: no other family seeds its generator the same way.
    assert independent._SALT not in (heldout._SALT, 0x5EED, 0x1CB)
    with pytest.raises(DataError, match="unknown independent kind"):
        independent.generate_case("head", 0)
    with pytest.raises(DataError, match="seed"):
        independent.generate_case("pelvis", -1)
    with pytest.raises(DataError, match="shape"):
        independent.generate_case("pelvis", 0, shape=(4, 40, 40))
    with pytest.raises(DataError, match="spacing"):
        independent.generate_case("pelvis", 0, spacing=(0.0, 1.0, 1.0))


def test_same_seed_same_case_other_seed_other_case() -> None:
    for kind in independent.KINDS:
        a = independent.generate_case(kind, 7, **SMALL)
        b = independent.generate_case(kind, 7, **SMALL)
        c = independent.generate_case(kind, 8, **SMALL)
        for name in ("ct", "mr", "mask", "labels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.info == b.info and a.label_names == b.label_names
        assert not np.array_equal(a.ct, c.ct) and a.info["anatomy"] != c.info["anatomy"]
    drawn = independent.generate_case("adult_head", 5)
    assert drawn.spacing == independent.generate_case("adult_head", 5).spacing
    assert drawn.spacing != independent.generate_case("adult_head", 6).spacing


def test_grid_noise_info_and_labels(cases: dict[tuple[str, int], PhantomCase]) -> None:
    pixels, slices, noises = [], [], []
    for (kind, seed), case in cases.items():
        assert case.labels is not None
        assert case.ct.shape == case.mr.shape == case.mask.shape == case.labels.shape
        assert int(np.prod(case.ct.shape)) <= independent.MAX_VOXELS
        dz, dy, dx = case.spacing
        assert dy == dx and 0.8 <= dx <= 3.0 and 1.0 <= dz <= 3.0, (kind, seed, case.spacing)
        pixels.append(dx)
        slices.append(dz)
        assert 5.0 <= case.info["ct_noise_hu"] <= 15.0
        noises.append(case.info["ct_noise_hu"])
        assert case.ct.dtype == np.float32 and case.mr.dtype == np.float32
        assert case.mask.dtype == bool and case.labels.dtype == np.uint8
        assert np.isfinite(case.ct).all() and np.isfinite(case.mr).all() and case.mr.min() >= 0
        info = case.info
        assert (info["family"], info["kind"], info["seed"]) == ("independent", kind, seed)
        assert info["spacing_mm"] == list(case.spacing) and info["grid"]["shape"] == list(case.ct.shape)
        json.dumps(info)
        assert set(np.unique(case.labels)) == set(case.label_names)
        assert set(case.label_names.values()) <= set(tissues.TISSUE_NAMES)
        body = case.labels != independent.AIR
        assert case.mask[body].all() and not case.mask[erode(~case.mask)].any()
        assert case.mask.sum() > body.sum()  # the body dilated by a voxel
    # The draws spread over their ranges (the pixel's lower bound rises where the voxel cap needs it).
    assert min(pixels) < 1.6 and max(pixels) > 2.4
    assert min(slices) < 2.0 and max(slices) > 2.5
    noises += [independent.generate_case(kind, seed, **SMALL).info["ct_noise_hu"]
               for kind in independent.KINDS for seed in range(10)]
    assert min(noises) < 7.0 and max(noises) > 13.0


def test_every_tissue_a_check_needs_has_an_interior(cases: dict[tuple[str, int], PhantomCase]) -> None:
    for (kind, seed), case in cases.items():
        counts = _interior_counts(case)
        missing = {name for name in NEEDED[kind] if counts.get(name, 0) < MIN_INTERIOR_VOXELS}
        if kind == "pelvis" and case.spacing[1] > 2.2:  # a thick cortex needs three voxels of it
            missing.discard(tissues.CORTICAL_BONE)
        if kind == "small_head":  # a child's thin diploe need not have an interior
            missing.discard(tissues.MARROW)
        assert not missing, (kind, seed, case.spacing, {n: counts.get(n, 0) for n in missing})
    assert all(tissues.URINE not in c.label_names.values() for (k, _), c in cases.items() if k != "pelvis")
    assert all(tissues.EYE not in c.label_names.values() for (k, _), c in cases.items() if k != "adult_head")
    assert any(tissues.GAS in c.label_names.values() for (k, _), c in cases.items() if k == "pelvis")


def test_tissue_values_constant_per_tissue_and_realistic(cases: dict[tuple[str, int], PhantomCase]) -> None:
    expected_hu = {tissues.FAT: (-106, -94), tissues.MUSCLE: (45, 55), tissues.GREY_MATTER: (35, 45),
                   tissues.WHITE_MATTER: (24, 32), tissues.CSF: (1, 9), tissues.URINE: (4, 12), tissues.EYE: (0, 14),
                   tissues.ORGAN: (37, 47), tissues.CORTICAL_BONE: (950, 1250), tissues.MARROW: (240, 420),
                   tissues.GAS: (-920, -880), tissues.AIR: (-1020, -980)}
    for (kind, seed), case in cases.items():
        ct = interior_medians(case, case.ct, steps=2)
        for name, (low, high) in expected_hu.items():
            if name in ct:
                assert low <= ct[name] <= high, (kind, seed, name, ct[name])
        # No texture: inside a big tissue the CT varies by its white noise alone, the MR by its Rician noise.
        assert case.labels is not None
        big = independent.WHITE if kind != "pelvis" else independent.MUSCLE
        core = erode(erode(case.labels == big))
        assert np.std(case.ct[core]) == pytest.approx(case.info["ct_noise_hu"], rel=0.08)
        assert np.std(case.mr[core]) == pytest.approx(case.info["mr_noise"], rel=0.15)
        t1w = case.info["t1w"]
        assert 950 <= t1w[tissues.FAT] <= 1160 and t1w[tissues.AIR] == 0.0
        assert t1w[tissues.FAT] == max(t1w.values())
        mr = interior_medians(case, case.mr, steps=2)
        for name, value in mr.items():  # the constant, blurred only at edges, plus Rician noise
            assert value == pytest.approx(t1w[name], abs=3.0 * case.info["mr_noise"]), (kind, seed, name)
        if tissues.EYE in t1w:
            assert t1w[tissues.EYE] < 0.3 * t1w[tissues.FAT]


def test_written_family_is_a_readable_evaluation_case_folder(tmp_path: Path) -> None:
    folders = write_family(tmp_path, "independent", 3, seed=40, **SMALL)
    assert [f.name for f in folders] == ["independent_000_small_head", "independent_001_adult_head",
                                         "independent_002_pelvis"]
    assert list_cases(tmp_path) == folders
    generated = independent.generate_case("pelvis", 42, **SMALL)
    case = load_case(folders[2])
    np.testing.assert_array_equal(case.mask, generated.mask)
    np.testing.assert_allclose(case.mr, generated.mr)
    np.testing.assert_allclose(case.ct, np.rint(generated.ct), atol=0.5)
    loaded = load_labels(folders[2])
    assert loaded is not None
    np.testing.assert_array_equal(loaded[0], generated.labels)
    info = json.loads((folders[2] / "phantom.json").read_text())
    assert info["family"] == "independent" and info["kind"] == "pelvis" and info["seed"] == 42
    with pytest.raises(DataError, match="evaluation only"):
        prepared.check_training_family(folders[2].name, prepared.case_family(folders[2]))
