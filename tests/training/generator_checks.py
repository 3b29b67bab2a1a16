"""Checks shared by the tests of the case generators (randomised and ICBM152 families).

Imported by path from the test modules next to it (tests/training is not on pytest's pythonpath).
"""

from __future__ import annotations

import numpy as np

from ct2mri_node.training.phantoms import PhantomCase
from ct2mri_node.training.tissue_order import erode


def interior_medians(case: PhantomCase, volume: np.ndarray, steps: int = 1, minimum: int = 20) -> dict[str, float]:
    """Median of ``volume`` over each labelled tissue eroded by ``steps`` voxels, by tissue name.

    Unlike :func:`.tissue_order.tissue_medians` the whole volume counts (air outside the body too),
    and a tissue needs only ``minimum`` interior voxels.
    """
    assert case.labels is not None
    out = {}
    for label, name in case.label_names.items():
        core = case.labels == label
        for _ in range(steps):
            core = erode(core)
        if core.sum() >= minimum:
            out[name] = float(np.median(volume[core]))
    return out


def slice_correlations(case: PhantomCase, mr: np.ndarray) -> dict[int, float]:
    """Per-slice correlation of ``mr`` with the noise-free label map of the case's T1w values."""
    assert case.labels is not None
    name_to_label = {name: label for label, name in case.label_names.items()}
    table = np.zeros(256, dtype=np.float32)
    for name, value in case.info["randomised"]["t1_relative"].items():
        table[name_to_label[name]] = value
    model = table[case.labels]
    return {z: float(np.corrcoef(model[z].ravel(), mr[z].ravel())[0, 1])
            for z in range(mr.shape[0]) if (case.labels[z] > 0).mean() > 0.1 and model[z].std() > 0}


def assert_aligned_except_recorded_slices(case: PhantomCase, min_correlation: float) -> None:
    """CT-side labels and MR agree on every slice but the recorded misaligned ones, and undoing a
    recorded shift brings that slice back onto the anatomy."""
    misaligned = {m["slice"]: m["shift_mm"] for m in case.info["misaligned_slices"]}
    corr = slice_correlations(case, case.mr)
    aligned = [c for z, c in corr.items() if z not in misaligned]
    assert aligned and min(aligned) > min_correlation, (case.name, min(aligned, default=None))
    undone = case.mr.copy()
    for z, shift_mm in misaligned.items():
        vox = [int(round(m / s)) for m, s in zip(shift_mm, case.spacing[1:])]
        undone[z] = np.roll(case.mr[z], (-vox[0], -vox[1]), axis=(0, 1))
    fixed = slice_correlations(case, undone)
    for z in misaligned:
        if z in corr:
            assert fixed[z] > corr[z], (case.name, z)
