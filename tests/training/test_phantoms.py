"""Phantom generator: determinism, tissue values, misalignment, and the SynthRAD layout on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.training.pairs import list_cases, load_case
from ct2mri_node.training.phantoms import (
    DEFAULT_GRIDS,
    INFO_FILE,
    MISALIGNED_FRACTION,
    PhantomCase,
    generate_case,
    misalign_slices,
    write_phantoms,
)

SMALL = {"shape": (24, 48, 48), "spacing": (6.0, 4.0, 4.0)}


@pytest.fixture(scope="module")
def head() -> PhantomCase:
    return generate_case("head", 11)


@pytest.fixture(scope="module")
def pelvis() -> PhantomCase:
    return generate_case("pelvis", 12)


def test_same_seed_same_arrays_other_seed_other_arrays() -> None:
    a = generate_case("head", 5, **SMALL)
    b = generate_case("head", 5, **SMALL)
    c = generate_case("head", 6, **SMALL)
    for name in ("ct", "mr", "mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.info == b.info
    assert not np.array_equal(a.ct, c.ct)


def test_default_grid_and_types(head: PhantomCase, pelvis: PhantomCase) -> None:
    for case, kind in ((head, "head"), (pelvis, "pelvis")):
        shape, spacing = DEFAULT_GRIDS[kind]
        assert case.ct.shape == case.mr.shape == case.mask.shape == shape
        assert case.spacing == spacing
        assert case.ct.dtype == np.float32 and case.mr.dtype == np.float32 and case.mask.dtype == bool
        assert np.isfinite(case.ct).all() and np.isfinite(case.mr).all()
        assert 0.2 < case.mask.mean() < 0.95  # a body inside air


def test_ct_values_are_plausible(head: PhantomCase, pelvis: PhantomCase) -> None:
    for case in (head, pelvis):
        assert case.ct.min() >= -1024 and case.ct.max() <= 3071
        assert np.median(case.ct[~case.mask]) < -900  # air outside
        assert np.percentile(case.ct[case.mask], 99.5) > 700  # cortical bone
        soft = case.ct[case.mask]
        assert np.mean((soft > -150) & (soft < 100)) > 0.4  # mostly fat, muscle, brain


def test_mr_is_t1_weighted(head: PhantomCase, pelvis: PhantomCase) -> None:
    """Fat bright, bone cortex and air dark, white matter brighter than grey, CSF dark."""
    for case in (head, pelvis):
        fat = (case.ct > -130) & (case.ct < -70) & case.mask
        bone = (case.ct > 900) & case.mask
        assert np.median(case.mr[fat]) > 1.3 * np.median(case.mr[case.mask])
        assert np.median(case.mr[bone]) < 0.4 * np.median(case.mr[fat])
        assert np.median(case.mr[~case.mask]) < 0.1 * np.median(case.mr[fat])
    white = (head.ct > 20) & (head.ct < 31) & head.mask
    grey = (head.ct > 35) & (head.ct < 42) & head.mask
    csf = (head.ct > -5) & (head.ct < 12) & head.mask
    assert np.median(head.mr[white]) > np.median(head.mr[grey]) > np.median(head.mr[csf])


def test_about_six_percent_of_slices_are_misaligned(head: PhantomCase) -> None:
    records = head.info["misaligned_slices"]
    assert len(records) == round(MISALIGNED_FRACTION * head.ct.shape[0])
    for record in records:
        assert 0 <= record["slice"] < head.ct.shape[0]
        assert 2.0 <= max(abs(v) for v in record["shift_mm"]) <= 8.0


def test_misalign_slices_shifts_only_the_chosen_slices() -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((50, 20, 20)).astype(np.float32)
    shifted = volume.copy()
    records = misalign_slices(np.random.default_rng(1), shifted, (3.0, 1.0, 1.0))
    changed = sorted(int(i) for i in np.flatnonzero(np.any(shifted != volume, axis=(1, 2))))
    assert changed == [r["slice"] for r in records]
    assert len(records) == 3


def test_write_phantoms_layout_and_cli(tmp_path: Path) -> None:
    folders = write_phantoms(tmp_path / "lib", 3, seed=4, **SMALL)
    assert [f.name for f in folders] == ["case000_head", "case001_pelvis", "case002_head"]
    assert list_cases(tmp_path / "lib") == sorted(folders)
    info = json.loads((folders[1] / INFO_FILE).read_text())
    assert info["kind"] == "pelvis" and info["seed"] == 5
    loaded = load_case(folders[2])
    direct = generate_case("head", 6, **SMALL)
    np.testing.assert_array_equal(loaded.ct, np.rint(direct.ct))
    np.testing.assert_array_equal(loaded.mr, direct.mr)
    cli = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "phantoms", "--out", str(tmp_path / "cli"), "--cases", "1",
         "--seed", "6", "--kinds", "head", "--shape", "24,48,48", "--spacing", "6,4,4"],
        capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    np.testing.assert_array_equal(load_case(tmp_path / "cli" / "case000_head").mr, direct.mr)


def test_cli_rejects_bad_options(tmp_path: Path) -> None:
    bad_kind = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "phantoms", "--out", str(tmp_path), "--cases", "1", "--kinds", "knee"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad_kind.returncode == 2 and "unknown kind(s) knee" in bad_kind.stderr
    bad_shape = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "phantoms", "--out", str(tmp_path), "--cases", "1", "--shape", "4,4"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad_shape.returncode == 2 and "three comma-separated" in bad_shape.stderr


def test_phantoms_dicom_option_writes_a_ct_series(tmp_path: Path) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "phantoms", "--out", str(tmp_path), "--cases", "1",
         "--kinds", "pelvis", "--shape", "12,32,32", "--spacing", "6,5,5", "--dicom"],
        capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    files = sorted((tmp_path / "case000_pelvis" / "ct_dicom").iterdir())
    assert len(files) == 12
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CT" and [float(v) for v in ds.PixelSpacing] == [5.0, 5.0]


def test_invalid_requests_raise_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown phantom kind"):
        generate_case("knee", 0)
    with pytest.raises(DataError, match="shape"):
        generate_case("head", 0, shape=(4, 48, 48))
    with pytest.raises(DataError, match="at least 1"):
        write_phantoms(tmp_path, 0)
