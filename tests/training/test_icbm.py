"""ICBM152 family: offline template loading, tissue values, T1w orders, randomised grids, alignment."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("SimpleITK")
if __import__("importlib.util").util.find_spec("nilearn") is None:
    pytest.skip("nilearn (ct2mri-node[train]) is not installed", allow_module_level=True)

from ct2mri_node.errors import DataError  # noqa: E402
from ct2mri_node.training import icbm, randomised  # noqa: E402
from ct2mri_node.training.families import write_family  # noqa: E402
from ct2mri_node.training.pairs import list_cases, load_case, load_labels  # noqa: E402
from ct2mri_node.training.phantoms import PhantomCase  # noqa: E402

GRID = ((28, 112, 100), (4.0, 2.0, 2.0))
NAME_TO_LABEL = {name: label for label, name in icbm.LABEL_NAMES.items()}


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Binary erosion by ``steps`` voxels (6-connected; outside the volume counts as outside)."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1, constant_values=False)
        core = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for shift in (-1, 1):
                core &= np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1]
        out = core
    return out


def medians(case: PhantomCase, volume: np.ndarray, steps: int = 1, minimum: int = 20) -> dict[str, float]:
    assert case.labels is not None
    out = {}
    for label, name in case.label_names.items():
        core = erode(case.labels == label, steps)
        if core.sum() >= minimum:
            out[name] = float(np.median(volume[core]))
    return out


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
        measured = medians(case, case.ct, steps=1)
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
        measured = {k: v / randomised.MR_SCALE for k, v in medians(case, case.mr, steps=1).items()}
        low, high = randomised.MR_RANGES[randomised.Tissue.WHITE]
        assert low / bias <= measured["white_matter"] <= high * bias
        assert measured["white_matter"] > measured["grey_matter"] > measured["csf"]
        assert measured["csf"] > measured["air"]
        for name, value in case.info["randomised"]["t1_relative"].items():
            low, high = randomised.MR_RANGES[NAME_TO_LABEL[name]]
            assert low <= value <= high


def _slice_correlations(case: PhantomCase, mr: np.ndarray) -> dict[int, float]:
    """Per-slice correlation of the MR with the noise-free label map of T1w values."""
    assert case.labels is not None
    table = np.zeros(256, dtype=np.float32)
    for name, value in case.info["randomised"]["t1_relative"].items():
        table[NAME_TO_LABEL[name]] = value
    model = table[case.labels]
    return {z: float(np.corrcoef(model[z].ravel(), mr[z].ravel())[0, 1])
            for z in range(mr.shape[0]) if (case.labels[z] > 0).mean() > 0.1 and model[z].std() > 0}


def test_ct_and_mr_are_aligned_except_the_recorded_slices(cases: list[PhantomCase]) -> None:
    for case in cases:
        misaligned = {m["slice"]: m["shift_mm"] for m in case.info["misaligned_slices"]}
        corr = _slice_correlations(case, case.mr)
        aligned = [c for z, c in corr.items() if z not in misaligned]
        assert aligned and min(aligned) > 0.7, (case.name, min(aligned))
        undone = case.mr.copy()
        for z, shift_mm in misaligned.items():
            vox = [int(round(m / s)) for m, s in zip(shift_mm, case.spacing[1:])]
            undone[z] = np.roll(case.mr[z], (-vox[0], -vox[1]), axis=(0, 1))
        fixed = _slice_correlations(case, undone)
        for z in misaligned:
            if z in corr:
                assert fixed[z] > corr[z], (case.name, z)


@pytest.mark.slow
def test_write_family_cases_are_readable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folders = write_family(tmp_path, "icbm", 1, seed=3, shape=(20, 64, 64), spacing=(5.0, 3.0, 3.0))
    assert [f.name for f in list_cases(tmp_path)] == ["icbm_000_head"] == [f.name for f in folders]
    case = load_case(folders[0])
    labels = load_labels(folders[0])
    assert labels is not None and labels[0].shape == case.ct.shape
    assert set(labels[1].values()) == set(icbm.LABEL_NAMES.values())
