"""ICBM152 family: offline template loading, tissue values, T1w orders, randomised grids, alignment."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# nilearn is a test dependency (pyproject's test extra): without it these tests fail, they do not skip.
from ct2mri_node.errors import DataError  # noqa: E402
from ct2mri_node.training import icbm, randomised  # noqa: E402
from ct2mri_node.training.families import write_family  # noqa: E402
from ct2mri_node.training.pairs import list_cases, load_case, load_labels  # noqa: E402
from ct2mri_node.training.phantoms import PhantomCase  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # generator_checks, next to this file
from generator_checks import assert_aligned_except_recorded_slices, interior_medians  # noqa: E402

GRID = ((28, 112, 100), (4.0, 2.0, 2.0))
NAME_TO_LABEL = {name: label for label, name in icbm.LABEL_NAMES.items()}


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [icbm.generate_case("head", seed, *GRID) for seed in (1, 2)]


@pytest.mark.slow
def test_templates_load_offline_without_importing_nilearn() -> None:
    code = textwrap.dedent("""
        import socket, sys
        def refuse(*args, **kwargs):
            raise OSError("network access blocked by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        from ct2mri_node.training import icbm
        tpl = icbm.load_templates()
        assert icbm.load_templates() is tpl  # cached in the process
        case = icbm.generate_case("head", 0, (16, 48, 48), (6.0, 4.0, 4.0))
        assert case.mr.max() > 0
        assert "nilearn" not in sys.modules and "sklearn" not in sys.modules, "nilearn was imported"
        print("ok", tpl.t1_refs)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok")


def test_missing_nilearn_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(icbm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"ct2mri-node\[train\]"):
        icbm.template_folder()


def test_templates_and_derived_masks() -> None:
    tpl = icbm.load_templates()
    r_csf, r_gm, r_wm = tpl.t1_refs
    assert r_csf < r_gm < r_wm
    assert all(f.endswith("_converted.nii.gz") for f in tpl.files)
    import SimpleITK as sitk

    brain = sitk.GetArrayViewFromImage(tpl.brain) > 0
    dist = sitk.GetArrayViewFromImage(tpl.dist)
    assert 1.3e6 < brain.sum() < 2.2e6  # about 1.5-2 l of brain at 1 mm
    assert (dist[brain] < 0.5).all()  # the brain lies inside the intracranial space


def test_same_seed_same_case_other_seed_other_case(cases: list[PhantomCase]) -> None:
    again = icbm.generate_case("head", 1, *GRID)
    for name in ("ct", "mr", "mask", "labels"):
        np.testing.assert_array_equal(getattr(cases[0], name), getattr(again, name))
    assert again.info == cases[0].info
    assert cases[0].info["randomised"]["pose"] != cases[1].info["randomised"]["pose"]
    assert cases[0].labels is not None and cases[1].labels is not None
    assert (cases[0].labels != cases[1].labels).mean() > 0.02


@pytest.mark.slow
def test_random_grid_is_capped_and_varies() -> None:
    a, b = icbm.generate_case("head", 5), icbm.generate_case("head", 6)
    assert (a.ct.shape, a.spacing) != (b.ct.shape, b.spacing)
    for case in (a, b):
        assert case.ct.shape[0] <= icbm.MAX_SLICES and max(case.ct.shape[1:]) <= icbm.MAX_INPLANE
        assert icbm.SLICE_MM[0] <= case.spacing[0] <= icbm.SLICE_MM[1]
        assert icbm.INPLANE_MM[0] <= case.spacing[1] <= icbm.INPLANE_MM[1]


def test_case_contents_and_info(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert case.ct.dtype == np.float32 and case.mr.dtype == np.float32 and case.mask.dtype == bool
        assert case.labels is not None and case.labels.shape == case.ct.shape
        assert set(np.unique(case.labels)) == set(icbm.LABEL_NAMES)  # every tissue appears
        assert case.mask[case.labels > 0].all()
        info = case.info
        assert "not patient data" in info["note"] and info["misaligned_slices"]
        assert "Louis Collins" in info["templates"]["licence"]
        assert len(info["templates"]["files"]) == 3


def test_ct_values_match_the_tables(cases: list[PhantomCase]) -> None:
    for case in cases:
        noise = case.info["randomised"]["ct"]["noise_sd_hu"]
        hu = case.info["randomised"]["ct_hu"]
        measured = interior_medians(case, case.ct)
        low, high = randomised.CT_RANGES[randomised.Tissue.WHITE]
        assert low - noise <= measured["white_matter"] <= high + noise
        # Grey matter voxels mix in white matter and CSF (probability maps): between them.
        assert hu["csf"] - noise <= measured["grey_matter"] <= hu["grey_matter"] + noise
        assert measured["grey_matter"] > measured["white_matter"] - 2.0
        low, high = randomised.CT_RANGES[randomised.Tissue.AIR]
        assert abs(measured["air"] - low) < 2 * noise + 5
        assert (case.ct[case.labels == randomised.Tissue.CORTICAL] > 300).mean() > 0.5
        for name, value in hu.items():
            low, high = randomised.CT_RANGES[NAME_TO_LABEL[name]]
            assert low <= value <= high


def test_mr_values_and_t1w_orders(cases: list[PhantomCase]) -> None:
    for case in cases:
        params = case.info["randomised"]["mr"]
        bias = np.exp(2.5 * params["bias_amplitude"])
        measured = {k: v / randomised.MR_SCALE for k, v in interior_medians(case, case.mr).items()}
        low, high = randomised.MR_RANGES[randomised.Tissue.WHITE]
        assert low / bias <= measured["white_matter"] <= high * bias
        assert measured["white_matter"] > measured["grey_matter"] > measured["csf"]
        assert measured["csf"] > measured["air"]
        for name, value in case.info["randomised"]["t1_relative"].items():
            low, high = randomised.MR_RANGES[NAME_TO_LABEL[name]]
            assert low <= value <= high


def test_ct_and_mr_are_aligned_except_the_recorded_slices(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert_aligned_except_recorded_slices(case, min_correlation=0.7)


@pytest.mark.slow
def test_write_family_cases_are_readable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folders = write_family(tmp_path, "icbm", 1, seed=3, shape=(20, 64, 64), spacing=(5.0, 3.0, 3.0))
    assert [f.name for f in list_cases(tmp_path)] == ["icbm_000_head"] == [f.name for f in folders]
    case = load_case(folders[0])
    labels = load_labels(folders[0])
    assert labels is not None and labels[0].shape == case.ct.shape
    assert set(labels[1].values()) == set(icbm.LABEL_NAMES.values())
