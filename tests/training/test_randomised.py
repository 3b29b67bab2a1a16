"""Domain-randomised family: tissue values in their tables, T1w orders, randomised grids, alignment, CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.cli import main
from ct2mri_node.errors import DataError
from ct2mri_node.training import randomised
from ct2mri_node.training.pairs import list_cases, load_case, load_labels
from ct2mri_node.training.phantoms import PhantomCase
from ct2mri_node.training.tissue_order import tissue_medians

sys.path.insert(0, str(Path(__file__).resolve().parent))  # generator_checks, next to this file
from generator_checks import assert_aligned_except_recorded_slices, interior_medians  # noqa: E402

#: A fixed, small grid per kind for the value tests (fast; the random grid is tested separately).
GRIDS = {
    "head": ((30, 96, 84), (4.0, 2.4, 2.4)),
    "pelvis": ((24, 96, 128), (5.0, 3.0, 3.0)),
    "abdomen": ((24, 96, 128), (5.0, 3.0, 3.0)),
}
NAME_TO_LABEL = {name: label for label, name in randomised.LABEL_NAMES.items()}


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [randomised.generate_case(kind, seed, *GRIDS[kind]) for kind in randomised.KINDS for seed in (1, 2)]


def test_tables_are_consistent() -> None:
    for table in (randomised.CT_RANGES, randomised.MR_RANGES):
        assert set(table) == set(randomised.LABEL_NAMES)
        assert all(low <= high for low, high in table.values())
    ranges = {randomised.LABEL_NAMES[k]: v for k, v in randomised.MR_RANGES.items()}
    for bright, dark in randomised.T1_ORDERS:  # non-overlapping ranges: the order holds for every draw
        assert ranges[bright][0] > ranges[dark][1], (bright, dark)


def test_every_draw_keeps_the_t1w_orders() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        values = {randomised.LABEL_NAMES[k]: v for k, v in randomised.draw_values(rng, randomised.MR_RANGES).items()}
        for bright, dark in randomised.T1_ORDERS:
            assert values[bright] > values[dark]


@pytest.mark.slow
def test_same_seed_same_case_other_seed_other_geometry() -> None:
    a = randomised.generate_case("pelvis", 3)
    b = randomised.generate_case("pelvis", 3)
    for name in ("ct", "mr", "mask", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.info == b.info and a.spacing == b.spacing
    others = [randomised.generate_case(kind, seed) for kind, seed in (("pelvis", 4), ("head", 3))]
    grids = {(case.ct.shape, case.spacing) for case in (a, *others)}
    assert len(grids) == 3
    for shape, spacing in grids:
        assert shape[0] <= randomised.MAX_SLICES and max(shape[1:]) <= randomised.MAX_INPLANE
        assert randomised.SLICE_MM[0] <= spacing[0] <= randomised.SLICE_MM[1]
        assert randomised.INPLANE_MM[0] <= spacing[1] == spacing[2] <= randomised.INPLANE_MM[1]


def test_layouts_differ_on_a_fixed_grid() -> None:
    a = randomised.generate_case("head", 1, *GRIDS["head"])
    b = randomised.generate_case("head", 2, *GRIDS["head"])
    assert a.ct.shape == b.ct.shape == GRIDS["head"][0] and a.spacing == GRIDS["head"][1]
    assert a.labels is not None and b.labels is not None
    assert (a.labels != b.labels).mean() > 0.05
    assert a.info["randomised"]["layout"] != b.info["randomised"]["layout"]


def test_case_contents(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert case.ct.dtype == np.float32 and case.mr.dtype == np.float32 and case.mask.dtype == bool
        assert case.labels is not None and case.labels.dtype == np.uint8 and case.labels.shape == case.ct.shape
        assert set(np.unique(case.labels)) <= set(case.label_names)
        assert np.isfinite(case.ct).all() and np.isfinite(case.mr).all() and case.mr.min() >= 0
        assert -1024 <= case.ct.min() and case.ct.max() <= 3071
        assert 0.1 < case.mask.mean() <= 1.0
        assert case.mask[case.labels > 0].all()  # the mask covers the body
        info = case.info
        assert "not patient data" in info["note"] and info["misaligned_slices"]
        assert info["shape"] == list(case.ct.shape) and info["spacing_mm"] == list(case.spacing)


def test_drawn_values_are_inside_the_tables(cases: list[PhantomCase]) -> None:
    for case in cases:
        for key, table in (("ct_hu", randomised.CT_RANGES), ("t1_relative", randomised.MR_RANGES)):
            for name, value in case.info["randomised"][key].items():
                low, high = table[NAME_TO_LABEL[name]]
                assert low - 1e-3 <= value <= high + 1e-3, (case.name, key, name, value)


def test_measured_ct_values_are_inside_the_table(cases: list[PhantomCase]) -> None:
    for case in cases:
        params = case.info["randomised"]["ct"]
        measured = interior_medians(case, case.ct, steps=2)
        assert len(measured) >= 4 and "muscle" in measured
        for name, value in measured.items():
            label = NAME_TO_LABEL[name]
            low, high = randomised.CT_RANGES[label]
            tol = params["noise_sd_hu"] + params["texture_gain"] * randomised.CT_TEXTURE.get(label, 0.0) + 3.0
            assert low - tol <= value <= high + tol, (case.name, name, value)


def test_measured_mr_values_and_t1w_orders(cases: list[PhantomCase]) -> None:
    for case in cases:
        params = case.info["randomised"]["mr"]
        measured = {k: v / randomised.MR_SCALE for k, v in interior_medians(case, case.mr, steps=2).items()}
        bias = np.exp(2.5 * params["bias_amplitude"])
        floor = 2.0 * params["rician_sigma"] / randomised.MR_SCALE
        for name, value in measured.items():
            low, high = randomised.MR_RANGES[NAME_TO_LABEL[name]]
            assert low / bias - 0.01 <= value <= high * bias + floor, (case.name, name, value)
        checked = 0
        for bright, dark in randomised.T1_ORDERS:
            if bright in measured and dark in measured:
                assert measured[bright] > measured[dark], (case.name, bright, dark, measured)
                checked += 1
        assert checked >= 2
    heads = [c for c in cases if c.info["kind"] == "head"]
    for case in heads:
        measured = tissue_medians(case.mr, case.labels, case.label_names, case.mask)
        assert measured["white_matter"] > measured["grey_matter"] > measured["csf"]


def test_ct_and_mr_are_aligned_except_the_recorded_slices(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert_aligned_except_recorded_slices(case, min_correlation=0.75)


@pytest.mark.slow
def test_generation_is_fast_and_small() -> None:
    import time

    for kind in randomised.KINDS:
        start = time.perf_counter()
        case = randomised.generate_case(kind, 7)
        assert time.perf_counter() - start < 6.0  # < 3 s unloaded; 2 shared cores here
        assert case.ct.size <= randomised.MAX_SLICES * randomised.MAX_INPLANE**2


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown randomised kind"):
        randomised.generate_case("knee", 0)
    with pytest.raises(DataError, match="seed"):
        randomised.generate_case("head", -1)
    with pytest.raises(DataError, match="shape"):
        randomised.generate_case("head", 0, shape=(4, 4, 4))


@pytest.mark.slow
def test_cli_writes_readable_cases(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "rand"
    assert main(["phantoms", "--family", "randomised", "--out", str(out), "--cases", "2"]) == 0
    assert "wrote 2 randomised case(s)" in capsys.readouterr().out
    folders = list_cases(out)
    assert [f.name for f in folders] == ["randomised_000_head", "randomised_001_pelvis"]
    for seed, folder in enumerate(folders):
        case = load_case(folder)
        labels = load_labels(folder)
        assert labels is not None
        label_map, names = labels
        assert label_map.shape == case.ct.shape and set(names.values()) <= set(randomised.LABEL_NAMES.values())
        direct = randomised.generate_case(folder.name.rsplit("_", 1)[1], seed)
        np.testing.assert_array_equal(case.mr, direct.mr)
        np.testing.assert_array_equal(label_map, direct.labels)
        assert case.spacing == pytest.approx(direct.spacing)
    assert main(["phantoms", "--family", "randomised", "--kinds", "knee", "--out", str(out), "--cases", "1"]) == 2


def test_cli_phantom_family_keeps_its_folder_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["phantoms", "--out", str(tmp_path), "--cases", "2", "--shape", "12,32,32",
                 "--spacing", "6,5,5"]) == 0
    assert [f.name for f in list_cases(tmp_path)] == ["case000_head", "case001_pelvis"]
