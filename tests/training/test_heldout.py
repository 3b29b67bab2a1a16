"""Held-out generator: determinism, distinct kinds, tissue values, T1w order, labels, layout on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.training import heldout, tissues
from ct2mri_node.training.families import TRAINING_FAMILIES, family, write_family
from ct2mri_node.training.pairs import list_cases, load_case, load_labels
from ct2mri_node.training.phantoms import PhantomCase
from ct2mri_node.training.tissue_order import tissue_medians, tissue_order

SMALL = {"shape": (20, 48, 48), "spacing": (6.0, 4.5, 4.5)}


@pytest.fixture(scope="module")
def cases() -> dict[str, PhantomCase]:
    """One default-size case per kind (about a second each)."""
    return {kind: heldout.generate_case(kind, 3) for kind in heldout.KINDS}


def test_interface_and_family_registration() -> None:
    assert heldout.KINDS == ("small_head", "adult_head", "pelvis")
    assert family("heldout") is heldout and "heldout" not in TRAINING_FAMILIES
    for shape, spacing in heldout.DEFAULT_GRIDS.values():
        assert int(np.prod(shape)) <= 1_500_000 and 1.0 <= spacing[1] <= 2.0
    with pytest.raises(DataError, match="unknown held-out kind"):
        heldout.generate_case("head", 0)
    with pytest.raises(DataError, match="seed"):
        heldout.generate_case("pelvis", -1)


def test_same_seed_same_case_other_seed_other_case() -> None:
    a = heldout.generate_case("adult_head", 7, **SMALL)
    b = heldout.generate_case("adult_head", 7, **SMALL)
    c = heldout.generate_case("adult_head", 8, **SMALL)
    for name in ("ct", "mr", "mask", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.info == b.info and a.label_names == b.label_names
    assert not np.array_equal(a.ct, c.ct) and not np.array_equal(a.labels, c.labels)


def test_grid_types_info_and_labels(cases: dict[str, PhantomCase]) -> None:
    for kind, case in cases.items():
        shape, spacing = heldout.DEFAULT_GRIDS[kind]
        assert case.ct.shape == case.mr.shape == case.mask.shape == case.labels.shape == shape
        assert case.spacing == spacing
        assert case.ct.dtype == np.float32 and case.mr.dtype == np.float32
        assert case.mask.dtype == bool and case.labels.dtype == np.uint8
        assert np.isfinite(case.ct).all() and np.isfinite(case.mr).all() and case.mr.min() >= 0
        assert 0.15 < case.mask.mean() < 0.9
        assert case.info["kind"] == kind and case.info["seed"] == 3
        assert case.info["grid"] == {"shape": list(shape), "spacing_mm": list(spacing)}
        assert case.info["note"] == "synthetic held-out data, not patient data"
        json.dumps(case.info)
        assert set(np.unique(case.labels)) == set(case.label_names)
        assert set(case.label_names.values()) <= set(tissues.TISSUE_NAMES)
        assert case.mask[case.labels != heldout.AIR].all()  # every tissue lies inside the body mask


def test_kinds_differ(cases: dict[str, PhantomCase]) -> None:
    names = {kind: set(case.label_names.values()) for kind, case in cases.items()}
    for kind in ("small_head", "adult_head"):
        assert {tissues.GREY_MATTER, tissues.WHITE_MATTER, tissues.CSF, tissues.EYE, tissues.SKIN} <= names[kind]
        assert tissues.URINE not in names[kind]
    assert {tissues.URINE, tissues.GAS, tissues.ORGAN, tissues.MARROW} <= names["pelvis"]
    assert tissues.WHITE_MATTER not in names["pelvis"]
    # The child's head is smaller, with a thinner skull and relatively larger ventricles.
    child, adult = cases["small_head"], cases["adult_head"]
    volume = {k: c.mask.sum() * np.prod(c.spacing) for k, c in cases.items()}
    assert volume["small_head"] < 0.8 * volume["adult_head"]
    bone = {k: np.isin(c.labels, [heldout.CORTEX, heldout.MARROW]).sum() * np.prod(c.spacing)
            for k, c in (("small_head", child), ("adult_head", adult))}
    assert bone["small_head"] < 0.6 * bone["adult_head"]


def test_tissue_values_are_realistic(cases: dict[str, PhantomCase]) -> None:
    expected_hu = {tissues.FAT: (-130, -70), tissues.MUSCLE: (30, 70), tissues.MARROW: (150, 450),
                   tissues.GREY_MATTER: (32, 48), tissues.WHITE_MATTER: (20, 36), tissues.CSF: (0, 22),
                   tissues.URINE: (0, 20), tissues.GAS: (-1000, -750), tissues.AIR: (-1024, -900)}
    for kind, case in cases.items():
        ct = tissue_medians(case.ct, case.labels, case.label_names, case.mask)
        for name, (low, high) in expected_hu.items():
            if name in ct:
                assert low <= ct[name] <= high, (kind, name, ct[name])
        cortex = np.isin(case.labels, [heldout.CORTEX])
        assert np.percentile(case.ct[cortex], 90) > 800  # dense cortical bone
        assert np.median(case.ct[~case.mask]) < -950


def test_generated_mr_orders_tissues_as_t1w(cases: dict[str, PhantomCase]) -> None:
    for kind, case in cases.items():
        order = tissue_order(case.mr, case.labels, case.label_names, case.mask)
        assert order["score"] == 1.0, (kind, order["failed"])
        checked = {(c["brighter"], c["darker"]) for c in order["checks"]}
        assert (tissues.FAT, tissues.CORTICAL_BONE) in checked and (tissues.FAT, tissues.MUSCLE) in checked
        if kind == "pelvis":
            assert {(tissues.MUSCLE, tissues.URINE), (tissues.MARROW, tissues.MUSCLE),
                    (tissues.MUSCLE, tissues.GAS)} <= checked
        else:
            assert {(tissues.WHITE_MATTER, tissues.GREY_MATTER), (tissues.GREY_MATTER, tissues.CSF),
                    (tissues.MUSCLE, tissues.AIR)} <= checked
    medians = tissue_medians(cases["adult_head"].mr, cases["adult_head"].labels,
                             cases["adult_head"].label_names, cases["adult_head"].mask)
    assert medians[tissues.FAT] == max(medians.values())
    assert medians[tissues.MARROW] > medians[tissues.MUSCLE]


def test_generation_is_fast() -> None:
    started = time.perf_counter()
    heldout.generate_case("pelvis", 21)
    assert time.perf_counter() - started < 6.0  # < 3 s on an idle core; headroom for shared CI


def test_written_family_is_a_readable_case_folder(tmp_path: Path) -> None:
    folders = write_family(tmp_path, "heldout", 3, seed=40, shape=(16, 40, 40), spacing=(6.0, 5.0, 5.0))
    assert [f.name for f in folders] == ["heldout_000_small_head", "heldout_001_adult_head", "heldout_002_pelvis"]
    assert list_cases(tmp_path) == folders
    generated = heldout.generate_case("pelvis", 42, (16, 40, 40), (6.0, 5.0, 5.0))
    case = load_case(folders[2])
    np.testing.assert_array_equal(case.mask, generated.mask)
    np.testing.assert_allclose(case.mr, generated.mr)
    np.testing.assert_allclose(case.ct, np.rint(generated.ct), atol=0.5)
    assert case.spacing == (6.0, 5.0, 5.0)
    loaded = load_labels(folders[2])
    assert loaded is not None
    labels, names = loaded
    np.testing.assert_array_equal(labels, generated.labels)
    assert names == generated.label_names
    info = json.loads((folders[2] / "phantom.json").read_text())
    assert info["family"] == "heldout" and info["kind"] == "pelvis" and info["seed"] == 42
