"""The SynthRAD-layout loader: round trip, grids, and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ct2mri_node.errors import DataError
from ct2mri_node.training.pairs import PairedCase, list_cases, load_case, write_case


def _case(name: str = "1BA001", shape: tuple[int, int, int] = (6, 8, 10)) -> PairedCase:
    rng = np.random.default_rng(3)
    ct = rng.integers(-1000, 2000, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[1:-1, 2:-2, 2:-2] = True
    return PairedCase(
        name=name,
        ct=ct,
        mr=rng.random(shape, dtype=np.float32) * 900,
        mask=mask,
        spacing=(3.0, 1.5, 0.75),
        origin=(-10.0, 20.5, 33.0),
        direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    )


def test_round_trip_keeps_arrays_and_grid(tmp_path: Path) -> None:
    case = _case()
    write_case(tmp_path / case.name, case)
    assert list_cases(tmp_path) == [tmp_path / case.name]
    loaded = load_case(tmp_path / case.name)
    assert loaded.name == case.name
    np.testing.assert_array_equal(loaded.ct, case.ct)
    np.testing.assert_array_equal(loaded.mr, case.mr)
    np.testing.assert_array_equal(loaded.mask, case.mask)
    assert loaded.ct.dtype == np.float32 and loaded.mr.dtype == np.float32 and loaded.mask.dtype == bool
    assert loaded.spacing == pytest.approx(case.spacing)
    assert loaded.origin == pytest.approx(case.origin)
    assert loaded.direction == pytest.approx(case.direction)
    image = sitk.ReadImage(str(tmp_path / case.name / "ct.nii.gz"))
    assert image.GetSpacing() == pytest.approx((0.75, 1.5, 3.0))  # ITK order x, y, z
    assert image.GetSize() == (10, 8, 6)


def test_mha_and_mixed_extensions_are_read(tmp_path: Path) -> None:
    case = _case("2PA017")
    folder = tmp_path / case.name
    write_case(folder, case)
    mr = sitk.ReadImage(str(folder / "mr.nii.gz"))
    sitk.WriteImage(mr, str(folder / "mr.mha"))
    (folder / "mr.nii.gz").unlink()
    loaded = load_case(list_cases(tmp_path)[0])
    np.testing.assert_array_equal(loaded.mr, case.mr)


def test_cases_are_sorted_and_unrelated_folders_skipped(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        write_case(tmp_path / name, _case(name))
    (tmp_path / "overview").mkdir()
    (tmp_path / "overview" / "notes.txt").write_text("not a case")
    assert [p.name for p in list_cases(tmp_path)] == ["a", "b", "c"]


def test_incomplete_case_names_the_missing_image(tmp_path: Path) -> None:
    write_case(tmp_path / "a", _case("a"))
    (tmp_path / "a" / "mask.nii.gz").unlink()
    with pytest.raises(DataError, match="incomplete: no mask"):
        list_cases(tmp_path)
    with pytest.raises(DataError, match="incomplete: no mask"):
        load_case(tmp_path / "a")


def test_empty_or_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no cases"):
        list_cases(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        list_cases(tmp_path / "nowhere")


def test_images_on_different_grids_are_refused(tmp_path: Path) -> None:
    write_case(tmp_path / "a", _case("a"))
    mr = sitk.ReadImage(str(tmp_path / "a" / "mr.nii.gz"))
    mr.SetSpacing((1.0, 1.5, 3.0))
    sitk.WriteImage(mr, str(tmp_path / "a" / "mr.nii.gz"))
    with pytest.raises(DataError, match="not on the CT grid"):
        list_cases(tmp_path)
    write_case(tmp_path / "a", _case("a"))
    small = sitk.GetImageFromArray(np.zeros((6, 8, 9), dtype=np.uint8))
    sitk.WriteImage(small, str(tmp_path / "a" / "mask.nii.gz"))
    with pytest.raises(DataError, match="has size"):
        load_case(tmp_path / "a")


def test_paired_case_refuses_mismatched_arrays() -> None:
    case = _case()
    with pytest.raises(DataError, match="same shape"):
        PairedCase("x", case.ct, case.mr[:-1], case.mask, case.spacing)
    with pytest.raises(DataError, match="spacing"):
        PairedCase("x", case.ct, case.mr, case.mask, (0.0, 1.0, 1.0))
