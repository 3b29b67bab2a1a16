"""Anatomical plausibility of a synthetic T1w MR: does it order the tissues as T1w does?

Why: SSIM/PSNR/MAE reward resemblance to one reference, but a translator that learnt a CT-like
mapping (bone bright, fat dark) can still score fairly on them. Two extra scores, numpy only:

``tissue_order(prediction, labels, names, mask)``
    For each tissue of the case's label map (``names``: label -> a name of :mod:`.tissues`), its
    *interior* is the set of voxels of that label whose 6 neighbours all carry the same label
    (erosion by one voxel; voxels on the volume's edge are never interior), inside ``mask``. A
    tissue with fewer than :data:`MIN_INTERIOR_VOXELS` interior voxels is absent, so that partial
    volume at thin structures never decides. Its value is the median of ``prediction`` over its
    interior (raw intensities: the order is unchanged by any increasing mapping, so no
    normalisation is needed). The checks, each applied when both tissues are present and held
    when the first median is strictly greater than the second:

    - ``white_matter > grey_matter``, ``grey_matter > csf``;
    - ``fat > muscle``, ``muscle > urine``;
    - ``marrow > muscle``;
    - ``S > cortical_bone`` for every soft tissue S in :data:`SOFT_TISSUES` (fat, muscle,
      grey_matter, white_matter, marrow, organ);
    - ``S > air`` and ``S > bowel_gas`` for every S in :data:`SOFT_TISSUES` (air inside the body
      only: outside air is not interior to the mask, as the mask is the body dilated by a voxel).

    Result: ``{"checks": [{"brighter", "darker", "brighter_median", "darker_median", "held"}],
    "held": int, "total": int, "score": held / total, or None when no check applies,
    "failed": ["a > b", ...]}``.

``body_correlation(reference, prediction, mask)``
    Pearson's correlation coefficient of the raw reference and prediction over the mask voxels
    (invariant to gain and offset); 0.0 when either is constant there.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import DataError
from . import tissues

log = logging.getLogger(__name__)

#: A tissue with fewer interior voxels (inside the mask) than this is not checked.
MIN_INTERIOR_VOXELS = 50
#: Tissues that must be brighter than cortical bone and than air/gas on T1w.
SOFT_TISSUES: tuple[str, ...] = (tissues.FAT, tissues.MUSCLE, tissues.GREY_MATTER, tissues.WHITE_MATTER,
                                 tissues.MARROW, tissues.ORGAN)
#: (brighter, darker) pairs expected on T1w, in the order they are reported.
EXPECTED_ORDER: tuple[tuple[str, str], ...] = (
    (tissues.WHITE_MATTER, tissues.GREY_MATTER),
    (tissues.GREY_MATTER, tissues.CSF),
    (tissues.FAT, tissues.MUSCLE),
    (tissues.MUSCLE, tissues.URINE),
    (tissues.MARROW, tissues.MUSCLE),
    *((soft, tissues.CORTICAL_BONE) for soft in SOFT_TISSUES),
    *((soft, tissues.AIR) for soft in SOFT_TISSUES),
    *((soft, tissues.GAS) for soft in SOFT_TISSUES),
)


def erode(region: np.ndarray) -> np.ndarray:
    """Voxels of ``region`` whose 6 neighbours are all in it (the volume's edge counts as outside)."""
    out = np.zeros_like(region, dtype=bool)
    inner = tuple(slice(1, n - 1) for n in region.shape)
    if any(n < 3 for n in region.shape):
        return out
    core = region[inner].copy()
    for axis in range(region.ndim):
        for step in (-1, 1):
            shifted = [slice(1, n - 1) for n in region.shape]
            shifted[axis] = slice(1 + step, region.shape[axis] - 1 + step)
            core &= region[tuple(shifted)]
    out[inner] = core
    return out


def dilate(region: np.ndarray) -> np.ndarray:
    """``region`` grown by one voxel along each axis (6-connected), without wrapping at the edges."""
    out = region.copy()
    for axis in range(region.ndim):
        lo = [slice(None)] * region.ndim
        hi = [slice(None)] * region.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= region[tuple(hi)]
        out[tuple(hi)] |= region[tuple(lo)]
    return out


def tissue_medians(prediction: np.ndarray, labels: np.ndarray, names: dict[int, str],
                   mask: np.ndarray) -> dict[str, float]:
    """Median of ``prediction`` over each present tissue's interior (module docstring), by name."""
    if prediction.shape != labels.shape or labels.shape != mask.shape:
        raise DataError(f"prediction {prediction.shape}, labels {labels.shape} and mask {mask.shape} "
                        "must have the same shape")
    mask = np.asarray(mask, dtype=bool)
    by_name: dict[str, list[int]] = {}
    for label, name in names.items():
        by_name.setdefault(name, []).append(int(label))
    medians: dict[str, float] = {}
    for name, values in by_name.items():
        interior = erode(np.isin(labels, values)) & mask
        count = int(interior.sum())
        if count >= MIN_INTERIOR_VOXELS:
            medians[name] = float(np.median(prediction[interior]))
        else:
            log.debug("tissue %s skipped: %d interior voxels", name, count)
    return medians


def tissue_order(prediction: np.ndarray, labels: np.ndarray, names: dict[int, str],
                 mask: np.ndarray) -> dict[str, Any]:
    """Which expected T1w orderings between the case's tissues hold (module docstring)."""
    medians = tissue_medians(prediction, labels, names, mask)
    checks: list[dict[str, Any]] = []
    for brighter, darker in EXPECTED_ORDER:
        if brighter in medians and darker in medians:
            checks.append({"brighter": brighter, "darker": darker, "brighter_median": medians[brighter],
                           "darker_median": medians[darker], "held": bool(medians[brighter] > medians[darker])})
    held = sum(check["held"] for check in checks)
    return {
        "checks": checks,
        "held": held,
        "total": len(checks),
        "score": held / len(checks) if checks else None,
        "failed": [f"{c['brighter']} > {c['darker']}" for c in checks if not c["held"]],
    }


def body_correlation(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of the raw reference and prediction over the mask voxels (0.0 if constant)."""
    if reference.shape != prediction.shape or reference.shape != mask.shape:
        raise DataError(f"reference {reference.shape}, prediction {prediction.shape} and mask {mask.shape} "
                        "must have the same shape")
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise DataError("the mask is empty: the correlation is computed inside the body mask")
    ref = reference[mask].astype(np.float64)
    pred = prediction[mask].astype(np.float64)
    ref -= ref.mean()
    pred -= pred.mean()
    denominator = float(np.sqrt((ref @ ref) * (pred @ pred)))
    if denominator == 0.0:
        log.warning("reference or prediction is constant inside the mask; correlation set to 0")
        return 0.0
    return float(np.clip((ref @ pred) / denominator, -1.0, 1.0))
