"""Size response: does a model read a small structure from its CT, or paint its surroundings over it?

Why: model 0.3.2 passed the per-tissue checks on the independent family, whose ventricles are large,
and failed them on the held-out heads, whose ventricles are 7-13 mm wide. Painting fluid balls into
a case's white matter shows why: a ball of CSF (8 HU) of radius 10 mm comes out at 0.4 of the white
matter around it, one of 5 mm radius at 1.1 (brighter than the white matter: invisible), while the
true T1w ratio is about 0.2 at every size. This module makes that probe repeatable, numpy only:

``fluid_spheres(ct, host, spacing, radii, rng)``
    The CT with one ball of fluid per radius painted into the ``host`` tissue, each ball at least
    :data:`MARGIN_MM` inside the host and :data:`APART_MM` from the others; and the balls placed.

``response(synthetic, spheres, host)``
    Per ball: the mean synthetic MR over its core (the inner half of the radius, at least one voxel
    deep) divided by the median over the host away from every ball (1.0: the ball is invisible).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

#: Fluid as CT sees it (CSF, urine: about 8 HU) and the CT noise painted with it.
FLUID_HU = 8.0
FLUID_NOISE_HU = 5.0
#: A ball sits this far inside its host tissue, and this far from every other ball (mm).
MARGIN_MM = 6.0
APART_MM = 20.0


@dataclass(frozen=True)
class Sphere:
    """One painted ball: its radius (mm), its centre voxel, its voxels and its core's voxels."""

    radius_mm: float
    centre: tuple[int, int, int]
    ball: np.ndarray
    core: np.ndarray


def _distance_inside(region: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return np.asarray(distance_transform_edt(region, sampling=spacing), dtype=np.float32)


def fluid_spheres(ct: np.ndarray, host: np.ndarray, spacing: Sequence[float], radii: Sequence[float],
                  rng: np.random.Generator, hu: float = FLUID_HU,
                  noise_hu: float = FLUID_NOISE_HU) -> tuple[np.ndarray, list[Sphere]]:
    """``ct`` with a ball of ``hu`` (plus Gaussian noise) per radius in ``host``, largest first; a
    radius with no room left is skipped (logged). DataError when no ball fits at all."""
    if ct.shape != host.shape:
        raise DataError(f"CT {ct.shape} and host mask {host.shape} differ in shape")
    depth = _distance_inside(host, spacing)
    grid = np.indices(ct.shape, dtype=np.float32)
    step = np.asarray(spacing, np.float32)
    out = ct.astype(np.float32, copy=True)
    free = np.ones(ct.shape, bool)
    spheres: list[Sphere] = []
    for radius in sorted(radii, reverse=True):
        candidates = np.argwhere((depth > radius + MARGIN_MM) & free)
        if len(candidates) == 0:
            log.info("no room for a %.1f mm ball in the host tissue", radius)
            continue
        centre = candidates[int(rng.integers(len(candidates)))]
        distance = np.sqrt(sum(((grid[i] - centre[i]) * step[i]) ** 2 for i in range(3)))
        ball = distance <= radius
        out[ball] = np.float32(hu) + rng.normal(0.0, noise_hu, int(ball.sum())).astype(np.float32)
        free &= distance > radius + APART_MM
        core = distance <= max(0.5 * radius, float(step.max()))
        spheres.append(Sphere(float(radius), tuple(int(c) for c in centre), ball, core))  # type: ignore[arg-type]
    if not spheres:
        raise DataError("no fluid ball fits in the host tissue: it is too thin")
    return out, sorted(spheres, key=lambda s: s.radius_mm)


def response(synthetic: np.ndarray, spheres: Sequence[Sphere], host: np.ndarray) -> dict[float, float]:
    """Radius (mm) -> mean synthetic over the ball's core / median synthetic over the host outside
    every ball grown by 3 voxels."""
    from scipy.ndimage import binary_dilation

    near = np.zeros(host.shape, bool)
    for sphere in spheres:
        near |= sphere.ball
    near = binary_dilation(near, iterations=3)
    reference = float(np.median(synthetic[host & ~near]))
    if reference <= 0:
        raise DataError("the host tissue is black in the synthetic MR: no ratio to report")
    return {sphere.radius_mm: float(synthetic[sphere.core].mean()) / reference for sphere in spheres}
