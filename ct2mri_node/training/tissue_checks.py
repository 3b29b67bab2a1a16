"""The checks a synthetic T1w MR must pass on a labelled case, numpy only.

Why: the tissue-order fraction of :mod:`.tissue_order` (medians, a share of the checks) and the
correlation let through a model that painted bladders and ventricles brightest, femoral heads
darker than muscle, and square tiles at its patch pitch. Each check here names one such failure,
and a case passes only when every one holds.

``tissue_interiors(labels, names, mask)``
    Each tissue's interior as in :mod:`.tissue_order` (label eroded by one 6-connected voxel,
    inside the mask, at least :data:`.tissue_order.MIN_INTERIOR_VOXELS` voxels), by name.

``tissue_table(synthetic, truth, interiors)``
    Per tissue: interior voxels, mean and SD of the synthetic and of the true MR.

``t1w_checks(means)``
    The T1w order as pairwise checks on interior MEANS, each held when the first mean is strictly
    greater (:data:`T1W_CHECKS`): csf, urine and eye darker than grey matter and muscle; marrow
    brighter than muscle; cortical bone, air (inside the body) and bowel gas darker than every
    soft tissue of :data:`T1W_SOFT_TISSUES`; white > grey > csf; fat > muscle > urine. A check
    applies when both tissues are present; ``all_held`` is True when every applied check holds
    (None when none applies).

``uniformity(synthetic, interiors)``
    For each (big, neighbour) of :data:`UNIFORMITY_PAIRS` present:
    ``|mean(big) - mean(neighbour)| / SD(synthetic over big's interior)``, capped at
    :data:`UNIFORMITY_CAP`; and their minimum. The truth is uniform inside each tissue, so blotches
    and tiles inside a big tissue raise its SD and lower this. (CT noise alone, 12 HU between white
    and grey matter over 8 HU of noise, gives about 1.5 for a CT-like image.)

``seam_ratio(image, region, edges, width=1.0)``
    How much sharper the image changes across the planes where sliding-window patches meet than
    elsewhere, inside uniform tissue (1.0: no seams; see its docstring).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from . import tissues
from .tissue_order import MIN_INTERIOR_VOXELS, erode

log = logging.getLogger(__name__)

#: Soft tissues that cortical bone, air and bowel gas must be darker than on T1w.
T1W_SOFT_TISSUES: tuple[str, ...] = (tissues.FAT, tissues.MUSCLE, tissues.GREY_MATTER, tissues.WHITE_MATTER,
                                     tissues.MARROW, tissues.ORGAN, tissues.SKIN)
_FLUIDS = (tissues.CSF, tissues.URINE, tissues.EYE)
_DARKEST = (tissues.CORTICAL_BONE, tissues.AIR, tissues.GAS)


def _unique(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(dict.fromkeys(pairs))


#: (brighter, darker) on T1w, every one of which must hold, in the order they are reported.
T1W_CHECKS: tuple[tuple[str, str], ...] = _unique([
    (tissues.WHITE_MATTER, tissues.GREY_MATTER),
    (tissues.GREY_MATTER, tissues.CSF),
    (tissues.FAT, tissues.MUSCLE),
    (tissues.MUSCLE, tissues.URINE),
    *((bright, fluid) for fluid in _FLUIDS for bright in (tissues.GREY_MATTER, tissues.MUSCLE)),
    (tissues.MARROW, tissues.MUSCLE),
    *((soft, dark) for dark in _DARKEST for soft in T1W_SOFT_TISSUES),
])
#: (big tissue, its neighbour) whose contrast is measured against the big tissue's own SD.
UNIFORMITY_PAIRS: tuple[tuple[str, str], ...] = ((tissues.WHITE_MATTER, tissues.GREY_MATTER),
                                                 (tissues.MUSCLE, tissues.FAT))
#: Uniformity of a perfectly flat tissue (SD 0) is reported as this, so the report stays JSON.
UNIFORMITY_CAP = 1000.0
#: A seam ratio whose elsewhere-gradient is 0 (a noise-free piecewise-constant image) is this.
SEAM_RATIO_CAP = 1000.0


def tissue_interiors(labels: np.ndarray, names: Mapping[int, str], mask: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean interior of each present tissue (module docstring), by tissue name."""
    if labels.shape != mask.shape:
        raise DataError(f"labels {labels.shape} and mask {mask.shape} must have the same shape")
    mask = np.asarray(mask, dtype=bool)
    by_name: dict[str, list[int]] = {}
    for label, name in names.items():
        by_name.setdefault(name, []).append(int(label))
    interiors: dict[str, np.ndarray] = {}
    for name, values in by_name.items():
        interior = erode(np.isin(labels, values)) & mask
        count = int(interior.sum())
        if count >= MIN_INTERIOR_VOXELS:
            interiors[name] = interior
        else:
            log.debug("tissue %s skipped: %d interior voxels", name, count)
    return interiors


def interior_region(interiors: Mapping[str, np.ndarray]) -> np.ndarray:
    """An int map: 0 outside every interior, 1, 2, ... inside each tissue's (for :func:`seam_ratio`)."""
    shape = next(iter(interiors.values())).shape if interiors else (0, 0, 0)
    region = np.zeros(shape, np.int16)
    for index, interior in enumerate(interiors.values(), start=1):
        region[interior] = index
    return region


def _mean_sd(volume: np.ndarray, where: np.ndarray) -> tuple[float, float]:
    values = volume[where].astype(np.float64)
    return float(values.mean()), float(values.std())


def tissue_table(synthetic: np.ndarray, truth: np.ndarray,
                 interiors: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per tissue: ``voxels``, ``synthetic_mean``/``_sd`` and ``true_mean``/``_sd`` over its interior."""
    if synthetic.shape != truth.shape:
        raise DataError(f"synthetic {synthetic.shape} and true MR {truth.shape} must have the same shape")
    table = {}
    for name, interior in interiors.items():
        if interior.shape != synthetic.shape:
            raise DataError(f"interior of {name} {interior.shape} does not match the MR {synthetic.shape}")
        s_mean, s_sd = _mean_sd(synthetic, interior)
        t_mean, t_sd = _mean_sd(truth, interior)
        table[name] = {"voxels": int(interior.sum()), "synthetic_mean": s_mean, "synthetic_sd": s_sd,
                       "true_mean": t_mean, "true_sd": t_sd}
    return table


def t1w_checks(means: Mapping[str, float]) -> dict[str, Any]:
    """Which of :data:`T1W_CHECKS` hold between the tissues present in ``means`` (module docstring).

    Result: ``{"checks": [{"brighter", "darker", "brighter_mean", "darker_mean", "held"}], "held",
    "total", "all_held" (None when no check applies), "failed": ["a > b", ...]}``.
    """
    checks: list[dict[str, Any]] = []
    for brighter, darker in T1W_CHECKS:
        if brighter in means and darker in means:
            checks.append({"brighter": brighter, "darker": darker, "brighter_mean": float(means[brighter]),
                           "darker_mean": float(means[darker]), "held": bool(means[brighter] > means[darker])})
    held = sum(check["held"] for check in checks)
    return {
        "checks": checks,
        "held": held,
        "total": len(checks),
        "all_held": (held == len(checks)) if checks else None,
        "failed": [f"{c['brighter']} > {c['darker']}" for c in checks if not c["held"]],
    }


def uniformity(synthetic: np.ndarray, interiors: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """``{"<big>_vs_<neighbour>": value, ..., "min": smallest or None}`` (module docstring)."""
    out: dict[str, float | None] = {}
    for big, neighbour in UNIFORMITY_PAIRS:
        if big not in interiors or neighbour not in interiors:
            continue
        big_mean, big_sd = _mean_sd(synthetic, interiors[big])
        neighbour_mean, _ = _mean_sd(synthetic, interiors[neighbour])
        contrast = abs(big_mean - neighbour_mean)
        out[f"{big}_vs_{neighbour}"] = min(contrast / big_sd, UNIFORMITY_CAP) if big_sd > 0 else (
            UNIFORMITY_CAP if contrast > 0 else 0.0)
    values = [v for v in out.values() if v is not None]
    out["min"] = min(values) if values else None
    return out


def seam_differences(n: int, edges: Sequence[float], width: float = 1.0) -> np.ndarray:
    """Boolean (n - 1,): which differences between voxels i and i + 1 of an axis of n voxels are on a seam.

    The difference i spans the segment [i, i + 1] between the two voxel centres; it is on a seam
    when that segment comes within ``width`` voxels of an edge p: ``i - width <= p <= i + 1 + width``.
    With ``width`` 0 that is the difference crossing p (``i <= p < i + 1``, or both neighbours when p
    is a voxel centre); with the default 1, for p = k - 0.5 (between voxels k - 1 and k), the
    differences k - 2, k - 1 and k: the seam and one voxel either side, which blending smears it over.
    """
    i = np.arange(max(n - 1, 0), dtype=np.float64)
    on = np.zeros(i.shape, bool)
    for p in edges:
        on |= (i - width <= p) & (p <= i + 1 + width)
    return on


def seam_ratio(image: np.ndarray, region: np.ndarray, edges: Sequence[Sequence[float]],
               width: float = 1.0) -> float | None:
    """Mean |finite difference| of ``image`` across patch seams over the same elsewhere, in uniform tissue.

    ``edges[a]`` lists the planes where sliding-window patches meet along axis ``a`` of ``image``, in
    voxel-index units: a plane at p lies between voxels floor(p) and floor(p) + 1, so the boundary
    between voxels k - 1 and k is p = k - 0.5. The differences ``image[i + 1] - image[i]`` along every
    axis are split by :func:`seam_differences` (``width`` voxels either side of a plane count as
    seam). Only differences whose two voxels carry the same non-zero value of ``region`` count (an int
    map of tissue interiors, e.g. :func:`interior_region`; a bool map is one tissue), so tissue
    boundaries never do. Result: mean |difference| on seams / mean |difference| elsewhere, pooled
    over the axes; 1.0 means no seams. None when either set is empty; :data:`SEAM_RATIO_CAP` when
    the image is flat elsewhere but not across the seams.
    """
    if image.shape != region.shape:
        raise DataError(f"image {image.shape} and region {region.shape} must have the same shape")
    if len(edges) != image.ndim:
        raise DataError(f"seam edges: need one list of plane positions per axis ({image.ndim}), got {len(edges)}")
    region = np.asarray(region)
    if region.dtype == bool:
        region = region.astype(np.uint8)
    volume = image.astype(np.float32, copy=False)
    seam_sum = other_sum = 0.0
    seam_count = other_count = 0
    for axis in range(image.ndim):
        n = image.shape[axis]
        if n < 2:
            continue
        lo = [slice(None)] * image.ndim
        hi = [slice(None)] * image.ndim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        counted = (region[tuple(lo)] == region[tuple(hi)]) & (region[tuple(lo)] != 0)
        diff = np.abs(volume[tuple(hi)] - volume[tuple(lo)])
        on = seam_differences(n, [float(p) for p in edges[axis]], width)
        shape = [1] * image.ndim
        shape[axis] = n - 1
        on_seam = counted & on.reshape(shape)
        off_seam = counted & ~on.reshape(shape)
        seam_sum += float(diff[on_seam].sum(dtype=np.float64))
        seam_count += int(on_seam.sum())
        other_sum += float(diff[off_seam].sum(dtype=np.float64))
        other_count += int(off_seam.sum())
    if seam_count == 0 or other_count == 0:
        return None
    seam_mean, other_mean = seam_sum / seam_count, other_sum / other_count
    if other_mean == 0.0:
        return SEAM_RATIO_CAP if seam_mean > 0.0 else 1.0
    ratio = seam_mean / other_mean
    return min(ratio, SEAM_RATIO_CAP) if math.isfinite(ratio) else SEAM_RATIO_CAP


def case_checks(synthetic: np.ndarray, truth: np.ndarray, labels: np.ndarray, names: Mapping[int, str],
                mask: np.ndarray, edges: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
    """Every check of one labelled case: ``tissue_table``, ``t1w`` (no per-check list), ``uniformity``,
    ``seam_ratio`` (None without ``edges`` or when nothing can be measured)."""
    if synthetic.shape != labels.shape:
        raise DataError(f"synthetic MR {synthetic.shape} and labels {labels.shape} must have the same shape")
    interiors = tissue_interiors(labels, names, mask)
    table = tissue_table(synthetic, truth, interiors)
    t1w = t1w_checks({name: row["synthetic_mean"] for name, row in table.items()})
    seams = None
    if edges is not None and interiors:
        seams = seam_ratio(synthetic, interior_region(interiors), edges)
    return {"tissue_table": table, "t1w": {k: t1w[k] for k in ("held", "total", "all_held", "failed")},
            "uniformity": uniformity(synthetic, interiors), "seam_ratio": seams}
