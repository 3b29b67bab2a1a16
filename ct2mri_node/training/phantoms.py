"""Paired CT/MR phantoms of the head and the pelvis, written in the SynthRAD layout.

Why: no paired patient data can be downloaded here, yet a CT->MR model needs pairs in which the
MR is a plausible, non-trivial function of the CT. Each case is built in four steps:

1. **Anatomy.** A label map of tissue classes painted from superquadrics, tubes and smooth random
   fields, evaluated on coordinates that carry a random pose (rotation, translation, scale) and
   a smooth random deformation.
2. **CT.** Hounsfield units per tissue (varying a little per case, textured), smoothed for the
   partial-volume effect, plus correlated Gaussian noise.
3. **MR.** T1-weighted signal per tissue (fat bright, white > grey matter > CSF, cortical bone,
   air and gas dark, fatty marrow bright), smoothed, times a smooth bias field, with about 6% of
   the slices shifted in-plane by a few mm (misregistration, as in clinical pairs), then Rician
   noise.
4. **Mask.** The body outline, dilated by one voxel.

Everything is vectorised numpy; a default-size case takes a fraction of a second. The same kind
and seed give the same arrays. Case ``i`` of :func:`write_phantoms` uses ``seed + i``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from . import tissues
from .metrics import gaussian_filter
from .pairs import PairedCase, write_case, write_labels

log = logging.getLogger(__name__)

#: Three values in (z, y, x) order: a point or radii in mm.
Vec3 = Sequence[float] | np.ndarray

KINDS: tuple[str, ...] = ("head", "pelvis")
#: Default grid (z, y, x) and spacing (z, y, x) mm per kind: small enough for CPU training.
DEFAULT_GRIDS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "head": ((48, 96, 96), (3.0, 2.0, 2.0)),
    "pelvis": ((48, 96, 128), (3.0, 2.5, 2.5)),
}
#: Fraction of slices whose MR is shifted in-plane against the CT.
MISALIGNED_FRACTION = 0.06
#: Name of the per-case JSON that records how the phantom was made.
INFO_FILE = "phantom.json"


class Tissue(IntEnum):
    """Tissue classes of the label map."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    CORTICAL = 3
    TRABECULAR = 4
    GREY = 5
    WHITE = 6
    CSF = 7
    EYE = 8
    URINE = 9
    GAS = 10
    ORGAN = 11


#: CT: (mean HU, per-case spread, texture amplitude HU) per tissue.
CT_HU: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (-1000.0, 0.0, 0.0),
    Tissue.FAT: (-95.0, 8.0, 10.0),
    Tissue.MUSCLE: (45.0, 5.0, 6.0),
    Tissue.CORTICAL: (1350.0, 120.0, 150.0),
    Tissue.TRABECULAR: (320.0, 60.0, 90.0),
    Tissue.GREY: (38.0, 3.0, 2.0),
    Tissue.WHITE: (27.0, 3.0, 2.0),
    Tissue.CSF: (8.0, 3.0, 1.0),
    Tissue.EYE: (12.0, 3.0, 1.0),
    Tissue.URINE: (6.0, 4.0, 1.0),
    Tissue.GAS: (-880.0, 40.0, 60.0),
    Tissue.ORGAN: (40.0, 5.0, 5.0),
}
#: MR T1-weighted: (mean signal, relative per-case spread, relative texture) per tissue.
MR_T1: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (0.0, 0.0, 0.0),
    Tissue.FAT: (950.0, 0.05, 0.04),
    Tissue.MUSCLE: (380.0, 0.08, 0.05),
    Tissue.CORTICAL: (35.0, 0.3, 0.2),
    Tissue.TRABECULAR: (620.0, 0.1, 0.12),
    Tissue.GREY: (470.0, 0.05, 0.03),
    Tissue.WHITE: (700.0, 0.05, 0.03),
    Tissue.CSF: (110.0, 0.15, 0.05),
    Tissue.EYE: (130.0, 0.15, 0.05),
    Tissue.URINE: (90.0, 0.15, 0.05),
    Tissue.GAS: (8.0, 0.3, 0.2),
    Tissue.ORGAN: (420.0, 0.08, 0.06),
}


@dataclass
class PhantomCase(PairedCase):
    """A :class:`PairedCase` that also says how it was made and, where known, its tissue labels.

    ``info`` (kind, seed, pose, misaligned slices...) goes to ``phantom.json``; ``labels`` (uint8 on
    the CT grid) and ``label_names`` (label -> a name of :mod:`.tissues`) to ``labels.nii.gz`` and
    ``labels.json``, which the tissue-order score reads.
    """

    info: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None
    label_names: dict[int, str] = field(default_factory=dict)


#: Tissue names (:mod:`.tissues`) of this generator's label classes.
LABEL_NAMES: dict[int, str] = {
    Tissue.AIR: tissues.AIR, Tissue.FAT: tissues.FAT, Tissue.MUSCLE: tissues.MUSCLE,
    Tissue.CORTICAL: tissues.CORTICAL_BONE, Tissue.TRABECULAR: tissues.MARROW, Tissue.GREY: tissues.GREY_MATTER,
    Tissue.WHITE: tissues.WHITE_MATTER, Tissue.CSF: tissues.CSF, Tissue.EYE: tissues.EYE, Tissue.URINE: tissues.URINE,
    Tissue.GAS: tissues.GAS, Tissue.ORGAN: tissues.ORGAN,
}


# --------------------------------------------------------------------------- random fields
def _upsample_matrix(coarse: int, fine: int) -> np.ndarray:
    """(fine, coarse) linear-interpolation matrix stretching ``coarse`` samples over ``fine``."""
    pos = np.linspace(0.0, coarse - 1.0, fine)
    low = np.clip(np.floor(pos).astype(int), 0, coarse - 1)
    high = np.minimum(low + 1, coarse - 1)
    frac = pos - low
    matrix = np.zeros((fine, coarse))
    matrix[np.arange(fine), low] += 1.0 - frac
    matrix[np.arange(fine), high] += frac
    return matrix


def random_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], wavelength_mm: float
) -> np.ndarray:
    """A smooth random field (zero mean, unit std, float32) with features of ``wavelength_mm``.

    White noise on a coarse grid (a quarter wavelength apart) is smoothed there and then
    interpolated linearly onto the full grid: cheap even for short wavelengths.
    """
    step = wavelength_mm / 4.0
    coarse = [max(2, int(np.ceil(n * s / step)) + 1) for n, s in zip(shape, spacing)]
    values = gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.0)
    mz, my, mx = (_upsample_matrix(c, n).astype(np.float32) for c, n in zip(coarse, shape))
    cz, cy, cx = coarse
    nz, ny, nx = shape
    # Three 2D matrix products (BLAS), one per axis: x, then y, then z.
    values = (values.reshape(cz * cy, cx) @ mx.T).reshape(cz, cy, nx)
    values = (my @ values.transpose(1, 0, 2).reshape(cy, cz * nx)).reshape(ny, cz, nx)
    values = (mz @ np.ascontiguousarray(values.transpose(1, 0, 2)).reshape(cz, ny * nx)).reshape(nz, ny, nx)
    values = values - values.mean()
    return (values / max(float(values.std()), 1e-6)).astype(np.float32)


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Pose:
    """Rigid-plus-scale pose of the anatomy in the scanner grid (angles in degrees, mm)."""

    angles_deg: tuple[float, float, float]  # about z, y, x
    translation_mm: tuple[float, float, float]  # (z, y, x)
    scale: float


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation acting on (z, y, x) vectors: about z (axial plane), then y, then x."""
    a, b, c = np.deg2rad(angles_deg)
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_pose(rng: np.random.Generator, kind: str) -> Pose:
    tilt = 6.0 if kind == "head" else 3.0
    return Pose(
        angles_deg=(float(rng.uniform(-10, 10)), float(rng.uniform(-tilt, tilt)), float(rng.uniform(-tilt, tilt))),
        translation_mm=(float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8))),
        scale=float(rng.uniform(0.92, 1.06)),
    )


def anatomy_coordinates(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], pose: Pose
) -> np.ndarray:
    """(3, z, y, x) float32 anatomical coordinates (mm) of every voxel, after pose and deformation.

    Scanner coordinates are centred on the grid; the anatomy sits at ``R^T (p - t) / s`` plus a
    smooth random displacement of a few mm (wavelength ~100 mm).
    """
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    grid -= np.asarray(pose.translation_mm, dtype=np.float32)[:, None, None, None]
    rotation = _rotation(pose.angles_deg).T.astype(np.float32) / np.float32(pose.scale)
    coords = np.tensordot(rotation, grid, axes=(1, 0))
    amplitude = rng.uniform(1.5, 3.5)
    for axis in range(3):
        coords[axis] += amplitude * random_field(rng, shape, spacing, 100.0)
    return coords


def superquadric(
    coords: np.ndarray,
    centre: Vec3,
    radii: Vec3,
    exponent: float = 2.0,
    wobble: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Inside-mask of a superquadric (exponent 2: an ellipsoid); ``wobble`` mm bumps its surface.

    ``centre`` and ``radii`` are (z, y, x) mm; a radius of ``inf`` makes a cylinder along that axis.
    """
    level = np.zeros(coords.shape[1:], dtype=np.float32)
    for axis in range(3):
        if np.isfinite(radii[axis]):
            level += np.abs((coords[axis] - centre[axis]) / radii[axis]) ** exponent
    mean_radius = float(np.mean([r for r in radii if np.isfinite(r)]))
    # A surface displacement of ``wobble`` mm, to first order, at the mean radius.
    return level < (1.0 + np.asarray(wobble, dtype=np.float32) / mean_radius) ** exponent


def tube(coords: np.ndarray, start: Sequence[float], end: Sequence[float], radius: float) -> np.ndarray:
    """Inside-mask of a capsule (a cylinder with round ends) from ``start`` to ``end`` (mm)."""
    a = np.asarray(start, dtype=np.float32)
    axis = np.asarray(end, dtype=np.float32) - a
    rel = coords - a[:, None, None, None]
    length2 = float(axis @ axis)
    proj = np.tensordot(axis, rel, axes=(0, 0))
    t = np.clip(proj / length2, 0.0, 1.0)
    # |rel - t axis|^2 expanded, so that no (3, z, y, x) temporary is needed beyond rel.
    dist2 = np.einsum("i...,i...->...", rel, rel) - t * (2.0 * proj - t * length2)
    return dist2 < radius * radius


def _rotated(coords: np.ndarray, centre: Sequence[float], angles_deg: Sequence[float]) -> np.ndarray:
    """Coordinates expressed in a frame rotated about ``centre`` (for tilted shapes)."""
    c = np.asarray(centre, dtype=np.float32)[:, None, None, None]
    rotation = _rotation(angles_deg).T.astype(np.float32)
    return np.tensordot(rotation, coords - c, axes=(1, 0)) + c


def _paint_bone(
    labels: np.ndarray, coords: np.ndarray, centre: Vec3, radii: Vec3,
    cortex_mm: float, exponent: float = 2.0,
) -> None:
    """A bone: cortical shell ``cortex_mm`` thick around trabecular (marrow) bone."""
    labels[superquadric(coords, centre, radii, exponent)] = Tissue.CORTICAL
    inner = [r - cortex_mm for r in radii]
    labels[superquadric(coords, centre, inner, exponent)] = Tissue.TRABECULAR


def _paint_long_bone(
    labels: np.ndarray, coords: np.ndarray, start: Sequence[float], end: Sequence[float],
    radius: float, cortex_mm: float,
) -> None:
    labels[tube(coords, start, end, radius)] = Tissue.CORTICAL
    labels[tube(coords, start, end, radius - cortex_mm)] = Tissue.TRABECULAR


# --------------------------------------------------------------------------- anatomy
def _head_labels(rng: np.random.Generator, c: np.ndarray, shape: Sequence[int],
                 spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Head label map and body outline. Coordinates: z up, y posterior, x left (mm)."""
    c = c.copy()
    c[0] -= 3.0  # the 144 mm default field of view spans the orbits to the upper brain
    labels = np.zeros(shape, dtype=np.uint8)
    size = np.array([100.0, 88.0, 70.0]) * rng.uniform(0.94, 1.04, 3)
    skin_wobble = 2.0 * random_field(rng, shape, spacing, 60.0)
    body = superquadric(c, (0, 0, 0), size, 2.2, skin_wobble)
    labels[body] = Tissue.MUSCLE
    fat_mm = rng.uniform(2.5, 4.5)
    labels[superquadric(c, (0, 0, 0), size - 2.0, 2.2, skin_wobble)] = Tissue.FAT
    labels[superquadric(c, (0, 0, 0), size - 2.0 - fat_mm, 2.2)] = Tissue.CORTICAL
    labels[superquadric(c, (0, 0, 0), size - 4.0 - fat_mm, 2.2)] = Tissue.TRABECULAR
    labels[superquadric(c, (0, 0, 0), size - 7.0 - fat_mm, 2.2)] = Tissue.CORTICAL
    cavity_size = size - 9.0 - fat_mm
    _paint_brain(rng, labels, c, cavity_size, shape, spacing)
    _paint_face(rng, labels, c)
    return labels, body


def _paint_brain(rng: np.random.Generator, labels: np.ndarray, c: np.ndarray, cavity: np.ndarray,
                 shape: Sequence[int], spacing: Sequence[float]) -> None:
    """Intracranial contents: CSF, folded grey matter over white matter, ventricles, skull base."""
    z, y = c[0], c[1]
    below = ((z < -30) & (y < -5)) | (z < -62)  # face and neck under the skull base
    plate = ((z < -26) & (y < -1)) | (z < -58)  # the 4 mm skull base above them
    cranium = superquadric(c, (0, 0, 0), cavity, 2.2)
    labels[cranium & plate] = Tissue.CORTICAL
    labels[cranium & below] = Tissue.MUSCLE
    inside = cranium & ~plate
    labels[inside] = Tissue.CSF
    surface = 2.0 * random_field(rng, shape, spacing, 40.0)
    brain = superquadric(c, (0, 0, 0), cavity - 3.0, 2.2, surface) & inside
    labels[brain] = Tissue.GREY
    gyri = random_field(rng, shape, spacing, 18.0)
    white = superquadric(c, (0, 0, 0), cavity - 14.0, 2.2, 4.0 * gyri) & brain
    labels[white] = Tissue.WHITE
    labels[brain & (gyri < -1.3) & ~white] = Tissue.CSF  # sulci
    _paint_ventricles(rng, labels, c, brain)


def _paint_ventricles(rng: np.random.Generator, labels: np.ndarray, c: np.ndarray, brain: np.ndarray) -> None:
    size = rng.uniform(0.8, 1.4)
    for side in (-1.0, 1.0):
        rot = _rotated(c, (12, 0, side * 9), (side * 8.0, 0.0, 0.0))
        labels[superquadric(rot, (12, 0, side * 9), (10 * size, 24, 5 * size), 2.5) & brain] = Tissue.CSF
    labels[superquadric(c, (2, 4, 0), (9, 10, 1.8 * size)) & brain] = Tissue.CSF  # third ventricle


def _paint_face(rng: np.random.Generator, labels: np.ndarray, c: np.ndarray) -> None:
    """Orbits with fat and eyes, and the air-filled frontal, nasal and maxillary sinuses."""
    eye_z, eye_y = rng.uniform(-44, -38), rng.uniform(-64, -60)
    for side in (-1.0, 1.0):
        centre = (eye_z, eye_y, side * rng.uniform(29, 33))
        labels[superquadric(c, centre, (19, 19, 19))] = Tissue.CORTICAL
        labels[superquadric(c, (centre[0], centre[1] - 3, centre[2]), (17, 17, 17))] = Tissue.FAT
        labels[superquadric(c, (centre[0], centre[1] - 5, centre[2]), (11.5, 11.5, 11.5))] = Tissue.EYE
        sinus = (rng.uniform(-72, -66), -44.0, side * 24)
        labels[superquadric(c, sinus, (16, 19, 15))] = Tissue.CORTICAL
        labels[superquadric(c, sinus, (14, 17, 13))] = Tissue.GAS
    labels[superquadric(c, (-58, -60, 0), (24, 22, 7))] = Tissue.GAS  # nasal cavity
    labels[superquadric(c, (-58, -60, 0), (22, 20, 1.2))] = Tissue.CORTICAL  # septum
    labels[superquadric(c, (-14, -76, 0), (9, 5, 11)) & (labels == Tissue.TRABECULAR)] = Tissue.GAS


def _pelvis_labels(rng: np.random.Generator, c: np.ndarray, shape: Sequence[int],
                   spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Pelvis label map and body outline. Coordinates: z up, y posterior, x left (mm)."""
    labels = np.zeros(shape, dtype=np.uint8)
    size = np.array([np.inf, 100.0, 148.0]) * np.array([1.0, *rng.uniform(0.92, 1.05, 2)])
    wobble = 5.0 * random_field(rng, shape, spacing, 80.0)
    body = superquadric(c, (0, 0, 0), size, 2.6, wobble)
    labels[body] = Tissue.FAT
    fat_mm = rng.uniform(12, 30)
    labels[superquadric(c, (0, 0, 0), size - np.array([0, fat_mm, fat_mm]), 2.6, wobble)] = Tissue.MUSCLE
    labels[superquadric(c, (0, 0, 0), size - np.array([0, fat_mm, fat_mm]), 2.6, wobble)
           & (random_field(rng, shape, spacing, 30.0) > 1.3)] = Tissue.FAT  # fat planes between muscles
    labels[superquadric(c, (-5, 0, 0), (95, 55, 62))] = Tissue.FAT  # pelvic fat around the organs
    _paint_pelvic_bones(rng, labels, c)
    _paint_pelvic_organs(rng, labels, c, shape, spacing)
    return labels, body


def _paint_pelvic_bones(rng: np.random.Generator, labels: np.ndarray, c: np.ndarray) -> None:
    """Iliac wings, sacrum, acetabula, femoral heads, necks and shafts, pubic and ischial rami."""
    hip_x = rng.uniform(82, 92)
    for side in (-1.0, 1.0):
        head = (-32.0, -10.0, side * hip_x)
        wing = _rotated(c, (35, 25, side * 80), (side * 35.0, 0.0, side * 10.0))
        _paint_bone(labels, wing, (35, 25, side * 80), (55, 50, 11), 2.5)
        labels[superquadric(c, head, (31, 31, 31)) & (c[0] > -40)] = Tissue.CORTICAL
        labels[superquadric(c, head, (28, 28, 28)) & (c[0] > -40)] = Tissue.TRABECULAR
        labels[superquadric(c, head, (25, 25, 25))] = Tissue.MUSCLE  # joint space and cartilage
        _paint_bone(labels, c, head, (23, 23, 23), 2.5)
        trochanter = (-52.0, -4.0, side * (hip_x + 38))
        _paint_long_bone(labels, c, head, trochanter, 14.0, 3.0)
        _paint_long_bone(labels, c, trochanter, (-220.0, 0.0, side * (hip_x + 42)), 14.0, 4.0)
        _paint_long_bone(labels, c, (-38, -28, side * (hip_x - 12)), (-44, -72, side * 6), 9.0, 2.5)
        _paint_long_bone(labels, c, (-42, 6, side * (hip_x - 6)), (-74, 28, side * 55), 11.0, 2.5)
    sacrum = _rotated(c, (30, 78, 0), (0.0, 0.0, 0.0))
    sacrum = _rotated(sacrum, (30, 78, 0), (0.0, 25.0, 0.0))
    _paint_bone(labels, sacrum, (30, 78, 0), (50, 15, 46), 2.5)


def _paint_pelvic_organs(rng: np.random.Generator, labels: np.ndarray, c: np.ndarray,
                         shape: Sequence[int], spacing: Sequence[float]) -> None:
    """Bladder (urine in a muscular wall), prostate or uterus, and the rectum with gas."""
    fill = rng.uniform(0.7, 1.25)
    bladder = (-12.0, -42.0, 0.0)
    radii = np.array([34.0, 30.0, 42.0]) * fill
    labels[superquadric(c, bladder, radii + 3.0)] = Tissue.MUSCLE
    labels[superquadric(c, bladder, radii)] = Tissue.URINE
    if rng.random() < 0.5:  # prostate below the bladder
        labels[superquadric(c, (bladder[0] - radii[0] - 14, -30, 0), (17, 15, 20))] = Tissue.ORGAN
    else:  # uterus behind and above it
        uterus = _rotated(c, (10, 5, 0), (0.0, -30.0, 0.0))
        labels[superquadric(uterus, (10, 5, 0), (38, 18, 26))] = Tissue.ORGAN
    rectum_y = 48.0 + 4.0 * np.sin(c[0] / 25.0)
    rel = np.stack([c[0], c[1] - rectum_y + 48.0, c[2]])
    radius = rng.uniform(14, 19)
    top = c[0] < 25.0
    labels[superquadric(rel, (0, 48, 0), (np.inf, radius, radius)) & top] = Tissue.MUSCLE
    lumen = superquadric(rel, (0, 48, 0), (np.inf, radius - 4, radius - 4)) & top
    labels[lumen] = Tissue.ORGAN
    labels[lumen & (random_field(rng, shape, spacing, 25.0) > 0.3)] = Tissue.GAS


# --------------------------------------------------------------------------- intensities
def _lookup(rng: np.random.Generator, table: dict[Tissue, tuple[float, float, float]],
            relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-case tissue means (with spread) and texture amplitudes as lookup arrays."""
    means = np.zeros(len(Tissue), dtype=np.float32)
    texture = np.zeros(len(Tissue), dtype=np.float32)
    for tissue, (mean, spread, tex) in table.items():
        jitter = spread * rng.standard_normal()
        means[tissue] = mean * (1.0 + jitter) if relative else mean + jitter
        texture[tissue] = tex * means[tissue] if relative else tex
    return means, texture


def _blur_sigmas(spacing: Sequence[float], mm: float) -> tuple[float, ...]:
    """Gaussian sigmas in voxels for a point-spread of ``mm`` (FWHM-ish) per axis."""
    return tuple(mm / 2.355 / s for s in spacing)


def _ct_volume(rng: np.random.Generator, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """CT in HU: per-tissue values with texture, partial volume by smoothing, correlated noise."""
    means, texture = _lookup(rng, CT_HU, relative=False)
    tex = random_field(rng, labels.shape, spacing, 12.0)
    ct = means[labels] + texture[labels] * tex
    ct = gaussian_filter(ct, _blur_sigmas(spacing, 2.5))
    noise = gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 0.7)
    ct += noise * (rng.uniform(8.0, 18.0) / max(float(noise.std()), 1e-6))
    return np.clip(ct, -1024.0, 3071.0).astype(np.float32)


def _mr_signal(rng: np.random.Generator, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Noise-free T1 signal: per-tissue values with texture, smoothing and a bias field."""
    means, texture = _lookup(rng, MR_T1, relative=True)
    tex = random_field(rng, labels.shape, spacing, 14.0)
    mr = means[labels] + texture[labels] * tex
    mr = gaussian_filter(mr, _blur_sigmas(spacing, 3.0))
    bias = np.exp(rng.uniform(0.08, 0.2) * random_field(rng, labels.shape, spacing, 250.0))
    return (np.maximum(mr, 0.0) * bias).astype(np.float32)


def misalign_slices(
    rng: np.random.Generator, mr: np.ndarray, spacing: Sequence[float], fraction: float = MISALIGNED_FRACTION
) -> list[dict[str, Any]]:
    """Shift a ``fraction`` of the slices in-plane by 2-6 mm, in place; returns what was done.

    The count is ``round(fraction * slices)`` (at least one); edges uncovered by a shift are
    filled from the slice's own border. Returns ``[{"slice", "shift_mm": [dy, dx]}]``.
    """
    n_slices = mr.shape[0]
    count = max(1, int(round(fraction * n_slices)))
    chosen = np.sort(rng.choice(n_slices, size=min(count, n_slices), replace=False))
    records = []
    for index in chosen:
        shift_mm = rng.uniform(2.0, 6.0, 2) * rng.choice([-1.0, 1.0], 2)
        shift_vox = [int(np.sign(m) * max(1, round(abs(m) / s))) for m, s in zip(shift_mm, spacing[1:])]
        mr[index] = _shift_edge(mr[index], shift_vox)
        records.append({"slice": int(index), "shift_mm": [v * s for v, s in zip(shift_vox, spacing[1:])]})
    return records


def _shift_edge(image: np.ndarray, shift: Sequence[int]) -> np.ndarray:
    """Shift a 2D image by whole pixels, repeating the border into the uncovered edge."""
    rows = np.clip(np.arange(image.shape[0]) - shift[0], 0, image.shape[0] - 1)
    cols = np.clip(np.arange(image.shape[1]) - shift[1], 0, image.shape[1] - 1)
    return image[np.ix_(rows, cols)]


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (Rician; dark areas get a noise floor)."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by one voxel (6-connected)."""
    out = mask.copy()
    for axis in range(mask.ndim):
        out |= np.roll(mask, 1, axis) | np.roll(mask, -1, axis)
    return out


# --------------------------------------------------------------------------- public API
def _check_grid(kind: str, shape: Sequence[int], spacing: Sequence[float]) -> None:
    if kind not in KINDS:
        raise DataError(f"unknown phantom kind {kind!r}; choose from {', '.join(KINDS)}")
    if len(shape) != 3 or min(shape) < 8:
        raise DataError(f"phantom shape must be three sizes of at least 8 voxels, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DataError(f"phantom spacing must be three positive mm values, got {tuple(spacing)}")


def generate_case(
    kind: str,
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    name: str | None = None,
) -> PhantomCase:
    """One paired CT/MR phantom of ``kind`` ("head" or "pelvis"), deterministic in ``seed``.

    ``shape`` (z, y, x) and ``spacing`` (z, y, x) mm default to :data:`DEFAULT_GRIDS`.
    """
    default_shape, default_spacing = DEFAULT_GRIDS.get(kind, ((0, 0, 0), (0.0, 0.0, 0.0)))
    shape = tuple(int(v) for v in (shape or default_shape))
    spacing = tuple(float(v) for v in (spacing or default_spacing))
    _check_grid(kind, shape, spacing)
    if seed < 0:
        raise DataError(f"phantom seed must be zero or positive, got {seed}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    pose = _random_pose(rng, kind)
    coords = anatomy_coordinates(rng, shape, spacing, pose)
    paint = _head_labels if kind == "head" else _pelvis_labels
    labels, body = paint(rng, coords, shape, spacing)
    del coords
    ct = _ct_volume(rng, labels, spacing)
    mr = _mr_signal(rng, labels, spacing)
    misaligned = misalign_slices(rng, mr, spacing)
    mr = _rician(rng, mr, float(rng.uniform(0.012, 0.025)) * 1000.0)
    origin_xyz = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape[::-1], spacing[::-1]))
    info = {
        "kind": kind, "seed": seed, "shape": list(shape), "spacing_mm": list(spacing),
        "pose": {"angles_deg": list(pose.angles_deg), "translation_mm": list(pose.translation_mm),
                 "scale": pose.scale},
        "misaligned_slices": misaligned,
        "note": "synthetic phantom for training and testing; not patient data",
    }
    return PhantomCase(
        name=name or f"{kind}_{seed}", ct=ct, mr=mr, mask=_dilate(body),
        spacing=spacing, origin=origin_xyz, info=info,  # type: ignore[arg-type]
        labels=labels, label_names={int(k): v for k, v in LABEL_NAMES.items()},
    )


def write_phantom_case(folder: Path, case: PhantomCase) -> Path:
    """Write one generated case: images (SynthRAD layout), ``phantom.json`` and, if known, labels."""
    folder = write_case(folder, case)
    (folder / INFO_FILE).write_text(json.dumps(case.info, indent=2) + "\n")
    if case.labels is not None:
        write_labels(folder, case, case.labels, case.label_names)
    return folder


def write_phantoms(
    out: str | Path,
    cases: int,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> list[Path]:
    """Write ``cases`` phantoms under ``out`` (kinds in turn; case ``i`` uses ``seed + i``).

    Each case folder ``case<i:03d>_<kind>`` (sorted order is generation order) holds
    ``ct.nii.gz``, ``mr.nii.gz``, ``mask.nii.gz`` and
    :data:`INFO_FILE`. Returns the case folders in order.
    """
    if cases < 1:
        raise DataError(f"number of phantom cases must be at least 1, got {cases}")
    if not kinds:
        raise DataError("no phantom kinds given; choose from " + ", ".join(KINDS))
    out = Path(out)
    folders = []
    for i in range(cases):
        kind = kinds[i % len(kinds)]
        case = generate_case(kind, seed + i, shape, spacing, name=f"case{i:03d}_{kind}")
        folder = write_phantom_case(out / case.name, case)
        log.info("wrote phantom %s (%d of %d)", case.name, i + 1, cases)
        folders.append(folder)
    return folders
