"""Held-out paired CT/T1w-MR cases, for evaluation only: no training case ever comes from here.

Why a separate generator: a model scored on data drawn like its training data is scored on what
it memorised. This one shares no anatomy code with :mod:`.phantoms` or the other families; the
anatomy is composed from signed-distance functions (SDFs, negative inside, in mm) instead of
painted masks, so that tissue layers are iso-distance shells of one surface:

- primitives: ellipsoids, rounded boxes, capsules, tori and their smooth unions;
- ``small_head``: a child of about six (small, thin skull with little diploe, relatively large
  ventricles and subarachnoid spaces, small sinuses, adult-like T1 contrast);
- ``adult_head``: scalp (skin, fat), skull (cortical tables around marrow diploe), CSF, folded
  grey over white matter with sulci, deep grey nuclei, ventricles, eyes and air sinuses;
- ``pelvis``: skin and subcutaneous fat, muscles with fat planes, pelvic bones (cortical shells over
  marrow), femoral heads, bladder with urine, prostate or uterus, rectum and bowel with gas.

Intensities have their own model: per-case tissue values, a texture shared by CT and MR at 25 mm
plus modality-specific texture at 8 mm, an anisotropic point-spread, CT noise correlated in-plane
only (reconstruction kernel), and for the MR a smooth polynomial receive-coil bias field and Rician
noise. The pairs are perfectly aligned (no slice shifts). A default-size case takes 1-2 s on one core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from . import tissues
from .metrics import gaussian_filter
from .phantoms import PhantomCase, _rician, random_field
from .tissue_order import dilate

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("small_head", "adult_head", "pelvis")
#: Default grid (z, y, x) and spacing (z, y, x) mm per kind (each about 1 M voxels).
DEFAULT_GRIDS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "small_head": ((64, 128, 128), (2.5, 1.5, 1.5)),
    "adult_head": ((64, 128, 128), (2.5, 1.8, 1.8)),
    "pelvis": ((48, 128, 176), (3.0, 2.0, 2.0)),
}
NOTE = "synthetic held-out data, not patient data"
#: Mixed into the seed so that equal seeds of different families never share random numbers.
_SALT = 0x4E1D

#: Label value of each tissue: its index in :data:`tissues.TISSUE_NAMES`.
L: dict[str, int] = {name: index for index, name in enumerate(tissues.TISSUE_NAMES)}
AIR, GAS, FAT, MUSCLE = L[tissues.AIR], L[tissues.GAS], L[tissues.FAT], L[tissues.MUSCLE]
CORTEX, MARROW = L[tissues.CORTICAL_BONE], L[tissues.MARROW]
GREY, WHITE = L[tissues.GREY_MATTER], L[tissues.WHITE_MATTER]
CSF, URINE, ORGAN, EYE, SKIN = L[tissues.CSF], L[tissues.URINE], L[tissues.ORGAN], L[tissues.EYE], L[tissues.SKIN]

#: CT: (mean HU, per-case spread HU, texture HU at 8 mm, texture HU at 25 mm).
CT_TABLE: dict[int, tuple[float, float, float, float]] = {
    AIR: (-1000.0, 0.0, 3.0, 0.0), GAS: (-900.0, 30.0, 35.0, 20.0), FAT: (-100.0, 7.0, 8.0, 6.0),
    MUSCLE: (50.0, 5.0, 5.0, 4.0), CORTEX: (1350.0, 90.0, 90.0, 60.0), MARROW: (300.0, 50.0, 70.0, 30.0),
    GREY: (40.0, 2.5, 1.5, 1.5), WHITE: (28.0, 2.5, 1.5, 1.5), CSF: (8.0, 2.5, 1.0, 0.5),
    URINE: (10.0, 3.0, 1.0, 0.5), ORGAN: (45.0, 5.0, 5.0, 4.0), EYE: (10.0, 3.0, 1.0, 0.5),
    SKIN: (40.0, 6.0, 6.0, 4.0),
}
#: T1w: (mean, relative per-case spread, relative texture at 8 mm, relative texture at 25 mm).
MR_TABLE: dict[int, tuple[float, float, float, float]] = {
    AIR: (0.0, 0.0, 0.0, 0.0), GAS: (6.0, 0.3, 0.3, 0.1), FAT: (1000.0, 0.04, 0.03, 0.03),
    MUSCLE: (400.0, 0.07, 0.04, 0.03), CORTEX: (30.0, 0.3, 0.3, 0.1), MARROW: (780.0, 0.07, 0.08, 0.04),
    GREY: (480.0, 0.04, 0.02, 0.02), WHITE: (690.0, 0.04, 0.02, 0.02), CSF: (120.0, 0.12, 0.04, 0.02),
    URINE: (100.0, 0.12, 0.04, 0.02), ORGAN: (370.0, 0.07, 0.05, 0.03), EYE: (140.0, 0.12, 0.04, 0.02),
    SKIN: (560.0, 0.08, 0.05, 0.03),
}
#: Child's values that differ: thinner, less mineralised cortex and red (cellular) marrow.
CHILD_CT: dict[int, tuple[float, float, float, float]] = {CORTEX: (1100.0, 80.0, 80.0, 50.0),
                                                          MARROW: (220.0, 40.0, 50.0, 20.0)}
CHILD_MR: dict[int, tuple[float, float, float, float]] = {MARROW: (540.0, 0.06, 0.06, 0.03),
                                                          WHITE: (640.0, 0.04, 0.02, 0.02)}


# --------------------------------------------------------------------------- SDF primitives
def ellipsoid(p: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Approximate SDF of an ellipsoid (exact on spheres; ``inf`` radius: a cylinder along that axis).

    ``k0 (k0 - 1) / k1`` with ``k0 = |p/r|``, ``k1 = |p/r^2|`` is close to the true distance near
    the surface, which is where shells are cut.
    """
    k0 = np.zeros(p.shape[1:], np.float32)
    k1 = np.zeros(p.shape[1:], np.float32)
    for axis in range(3):
        if np.isfinite(radii[axis]):
            q = (p[axis] - np.float32(centre[axis])) / np.float32(radii[axis])
            k0 += q * q
            q /= np.float32(radii[axis])
            k1 += q * q
    k0 = np.sqrt(k0)
    return k0 * (k0 - 1.0) / np.maximum(np.sqrt(k1), 1e-6)


def rounded_box(p: np.ndarray, centre: Sequence[float], half: Sequence[float], rounding: float) -> np.ndarray:
    """Exact SDF of a box of half-sizes ``half`` grown by ``rounding`` mm (round edges)."""
    outside = np.zeros(p.shape[1:], np.float32)
    inside = np.full(p.shape[1:], -np.inf, np.float32)
    for axis in range(3):
        if np.isfinite(half[axis]):
            q = np.abs(p[axis] - np.float32(centre[axis])) - np.float32(half[axis])
            inside = np.maximum(inside, q)
            outside += np.maximum(q, 0.0) ** 2
    return np.sqrt(outside) + np.minimum(inside, 0.0) - np.float32(rounding)


def capsule(p: np.ndarray, start: Sequence[float], end: Sequence[float], radius: float) -> np.ndarray:
    """Exact SDF of the segment ``start``-``end`` thickened by ``radius`` mm."""
    a = np.asarray(start, np.float32)
    ab = np.asarray(end, np.float32) - a
    rel = [p[axis] - a[axis] for axis in range(3)]
    t = np.clip(sum(rel[i] * ab[i] for i in range(3)) / np.float32(ab @ ab), 0.0, 1.0)
    dist2 = sum((rel[i] - t * ab[i]) ** 2 for i in range(3))
    return np.sqrt(dist2) - np.float32(radius)


def torus(p: np.ndarray, centre: Sequence[float], axis: int, major: float, minor: float) -> np.ndarray:
    """Exact SDF of a torus around ``axis`` (0 z, 1 y, 2 x) through ``centre``: ring radius ``major``."""
    others = [i for i in range(3) if i != axis]
    ring = np.sqrt(sum((p[i] - np.float32(centre[i])) ** 2 for i in others)) - np.float32(major)
    return np.sqrt(ring * ring + (p[axis] - np.float32(centre[axis])) ** 2) - np.float32(minor)


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: the union of two SDFs with a fillet of about ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / np.float32(k), 0.0, 1.0)
    return b + (a - b) * h - np.float32(k) * h * (1.0 - h)


def turned(p: np.ndarray, centre: Sequence[float], plane: tuple[int, int], degrees: float) -> np.ndarray:
    """Coordinates of ``p`` in a frame turned by ``degrees`` in the plane of two axes about ``centre``."""
    c, s = np.float32(np.cos(np.deg2rad(degrees))), np.float32(np.sin(np.deg2rad(degrees)))
    a, b = plane
    out = p.copy()
    da, db = p[a] - np.float32(centre[a]), p[b] - np.float32(centre[b])
    out[a] = np.float32(centre[a]) + c * da + s * db
    out[b] = np.float32(centre[b]) - s * da + c * db
    return out


def _shell(labels: np.ndarray, sdf: np.ndarray, cortex_mm: float | np.ndarray,
           where: np.ndarray | bool = True) -> None:
    """A bone from one SDF: cortical bone where ``sdf < 0``, marrow deeper than ``cortex_mm``."""
    labels[(sdf < 0) & where] = CORTEX
    labels[(sdf < -cortex_mm) & where] = MARROW


# --------------------------------------------------------------------------- pose
def _plane_rotation(a: int, b: int, degrees: float) -> np.ndarray:
    matrix = np.eye(3)
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


def _anatomy_grid(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                  anchor: Sequence[float], scale: np.ndarray, tilt_deg: float) -> tuple[np.ndarray, dict[str, Any]]:
    """(3, z, y, x) anatomy coordinates (mm) of the voxels: the grid centre sits at ``anchor``.

    The patient lies with a random yaw (axial plane), pitch and roll and a shift of a few mm; the
    anatomy is stretched by ``scale`` per axis (an anatomy mm is ``scale`` scanner mm).
    """
    yaw, pitch, roll = rng.uniform(-8, 8), rng.uniform(-tilt_deg, tilt_deg), rng.uniform(-tilt_deg, tilt_deg)
    shift = rng.uniform(-5, 5, 3)
    rotation = _plane_rotation(1, 2, yaw) @ _plane_rotation(0, 1, pitch) @ _plane_rotation(0, 2, roll)
    axes = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, spacing)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    grid -= shift.astype(np.float32)[:, None, None, None]
    inverse = (rotation.T / scale[:, None]).astype(np.float32)
    coords = np.tensordot(inverse, grid, axes=(1, 0))
    coords += np.asarray(anchor, np.float32)[:, None, None, None]
    pose = {"yaw_pitch_roll_deg": [float(yaw), float(pitch), float(roll)], "shift_mm": [float(v) for v in shift],
            "scale": [float(v) for v in scale]}
    return coords.astype(np.float32, copy=False), pose


# --------------------------------------------------------------------------- heads
def _head(rng: np.random.Generator, p: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
          child: bool) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Head labels and body outline. Anatomy axes: z up, y posterior, x left (mm)."""
    z, y, x = p[0], p[1], p[2]
    labels = np.zeros(shape, np.uint8)
    skull = rng.uniform(3.0, 4.0) if child else rng.uniform(6.5, 9.0)
    table = rng.uniform(1.0, 1.3) if child else rng.uniform(1.4, 2.0)
    scalp_fat = rng.uniform(1.5, 3.0) if child else rng.uniform(2.5, 5.0)
    skin = 1.6
    csf_gap = rng.uniform(2.5, 4.0) if child else rng.uniform(1.5, 3.5)
    ventricle = rng.uniform(5.0, 6.5) if child else rng.uniform(3.5, 5.0)
    cortex = rng.uniform(3.0, 3.8)
    params = {"skull_mm": skull, "table_mm": table, "scalp_fat_mm": scalp_fat, "csf_gap_mm": csf_gap,
              "ventricle_radius_mm": ventricle, "grey_matter_mm": cortex}

    # Outer skull surface; the scalp is the iso-surface ``skin + fat`` mm outside it.
    cranium = ellipsoid(p, (15.0, 5.0, 0.0), (78.0, 94.0, 74.0))
    face_size = (0.8 if child else 1.0)
    face = rounded_box(p, (-42.0, -54.0, 0.0), (26.0 * face_size, 20.0, 36.0 * face_size), 14.0)
    neck = capsule(p, (-40.0, 12.0, 0.0), (-220.0, 18.0, 0.0), 48.0 * face_size)
    wobble = 0.8 * random_field(rng, shape, spacing, 50.0)
    outer = smooth_union(smooth_union(cranium - (skin + scalp_fat) + wobble, face, 12.0), neck, 20.0)
    body = outer < 0
    labels[body] = MUSCLE
    labels[body & (outer > -(skin + scalp_fat))] = FAT
    labels[body & (outer > -skin)] = SKIN

    # Skull vault above the skull base; the base is a plate under the cranial fossae.
    # Anterior fossa at the orbit roofs, deeper middle (laterally further forward) and posterior fossae.
    floor = np.float32(-8.0) - np.float32(30.0) * np.clip((y + 30.0 + 0.008 * x * x) / 25.0, 0.0, 1.0)
    above = z - floor  # mm above the floor of the cranial fossae
    base = 5.0 if child else 7.0
    vault = above > -base
    labels[vault & (cranium < 0)] = CORTEX
    labels[vault & (cranium < -table) & (cranium > table - skull)] = MARROW
    plate = (above < 0) & (above > -base) & (cranium < 0)
    labels[plate & (above < -table) & (above > table - base)] = MARROW
    if not child:  # frontal sinus: air in the diploe of the frontal bone
        labels[(ellipsoid(p, (2.0, -82.0, 0.0), (12.0, 10.0, 16.0)) < 0) & (labels == MARROW)] = AIR
    cavity = (cranium < -skull) & (above > 0)
    labels[cavity] = CSF

    # Brain: a perturbed inner iso-surface; grey matter is the outer ``cortex`` mm of it.
    surface = cranium + (skull + csf_gap) + 1.2 * random_field(rng, shape, spacing, 35.0)
    brain_sdf = np.maximum(surface, csf_gap - above)
    del surface
    brain = (brain_sdf < 0) & cavity
    labels[brain] = GREY
    gyri = random_field(rng, shape, spacing, 16.0)
    # Gyri: white matter reaches into the folds, so grey matter is ``cortex`` mm thick on average
    # over its folded depth of a few mm more; sulci are thin zero-sheets of another field.
    labels[brain & (brain_sdf + cortex + 3.0 + 3.0 * gyri < 0)] = WHITE
    sulci = random_field(rng, shape, spacing, 24.0)
    labels[(labels == GREY) & (np.abs(sulci) < 0.18)] = CSF
    labels[brain & (np.abs(x) < 1.2) & (z > 40.0)] = CSF  # interhemispheric fissure
    del gyri, sulci, brain_sdf

    # Deep grey nuclei, then ventricles (CSF).
    for side in (-1.0, 1.0):
        labels[(ellipsoid(p, (22.0, 6.0, side * 11.0), (11.0, 15.0, 8.0)) < 0) & brain] = GREY  # thalamus
        labels[(ellipsoid(p, (22.0, -10.0, side * 23.0), (11.0, 17.0, 6.5)) < 0) & brain] = GREY  # lentiform
        labels[(ellipsoid(p, (33.0, -20.0, side * 13.0), (8.0, 9.0, 5.0)) < 0) & brain] = GREY  # caudate head
        atrium = (36.0, 22.0, side * 17.0)
        lateral = smooth_union(capsule(p, (38.0, -26.0, side * 11.0), atrium, ventricle),
                               capsule(p, atrium, (30.0, 46.0, side * 13.0), 0.6 * ventricle), 4.0)
        lateral = smooth_union(lateral, capsule(p, atrium, (4.0, -6.0, side * 30.0), 0.55 * ventricle), 4.0)
        labels[(lateral < 0) & brain] = CSF
    labels[(rounded_box(p, (20.0, 2.0, 0.0), (7.0, 10.0, 0.8 + 0.25 * ventricle), 1.0) < 0) & brain] = CSF
    labels[(ellipsoid(p, (-22.0, 32.0, 0.0), (5.0, 4.0, 6.0)) < 0) & brain] = CSF  # fourth ventricle

    for side in (-1.0, 1.0):  # petrous temporal bones: dense, solid cortical bone in the skull base
        labels[capsule(p, (-28.0, 18.0, side * 52.0), (-24.0, -4.0, side * 18.0), 6.5) < 0] = CORTEX
    _face(rng, labels, p, child)
    return labels, body, params


def _face(rng: np.random.Generator, labels: np.ndarray, p: np.ndarray, child: bool) -> None:
    """Orbits (bony wall, fat, eye), air sinuses with thin walls, the nasal cavity and its septum."""
    eye_r = rng.uniform(10.5, 11.0) if child else rng.uniform(11.5, 12.5)
    eye_x = rng.uniform(27.0, 29.0) if child else rng.uniform(30.0, 33.0)
    sinus = 0.6 if child else 1.0
    for side in (-1.0, 1.0):
        orbit = ellipsoid(p, (-24.0, -62.0, side * eye_x), (17.0, 22.0, 16.0))
        labels[(orbit < 1.6) & (orbit > 0)] = CORTEX
        labels[orbit < 0] = FAT
        labels[capsule(p, (-24.0, -60.0, side * eye_x), (-22.0, -30.0, side * 14.0), 2.0) < 0] = MUSCLE  # optic nerve
        labels[ellipsoid(p, (-24.0, -70.0, side * eye_x), (eye_r, eye_r, eye_r)) < 0] = EYE
        maxillary = ellipsoid(p, (-56.0, -54.0, side * 24.0), (16.0 * sinus, 15.0 * sinus, 12.0 * sinus))
        labels[maxillary < 1.5] = CORTEX
        labels[maxillary < 0] = AIR
    ethmoid = rounded_box(p, (-24.0, -48.0, 0.0), (8.0 * sinus, 14.0, 5.0 * sinus), 3.0)
    labels[ethmoid < 1.5] = CORTEX
    labels[ethmoid < 0] = AIR
    nasal = rounded_box(p, (-48.0, -66.0, 0.0), (14.0, 11.0, 4.0), 3.0)
    labels[nasal < 0] = AIR
    labels[(nasal < 0) & (np.abs(p[2]) < 1.0)] = CORTEX  # septum


# --------------------------------------------------------------------------- pelvis
def _pelvis(rng: np.random.Generator, p: np.ndarray, shape: Sequence[int],
            spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Pelvis labels and body outline. Anatomy axes: z up, y posterior, x left (mm)."""
    labels = np.zeros(shape, np.uint8)
    fat_mm = rng.uniform(10.0, 35.0)
    skin = 1.8
    male = bool(rng.random() < 0.5)
    fill = rng.uniform(0.6, 1.15)
    params: dict[str, Any] = {"subcutaneous_fat_mm": fat_mm, "sex": "male" if male else "female",
                              "bladder_fill": fill}

    trunk = ellipsoid(p, (0.0, 0.0, 0.0), (np.inf, 98.0, 148.0))
    buttocks = [ellipsoid(p, (-45.0, 45.0, side * 58.0), (70.0, 58.0, 72.0)) for side in (-1.0, 1.0)]
    outer = smooth_union(smooth_union(trunk, buttocks[0], 18.0), buttocks[1], 18.0)
    outer += 2.0 * random_field(rng, shape, spacing, 70.0)
    del trunk, buttocks
    body = outer < 0
    inner = outer < -(skin + fat_mm)
    labels[body] = FAT
    labels[body & (outer > -skin)] = SKIN
    labels[inner] = MUSCLE
    planes = random_field(rng, shape, spacing, 45.0)
    labels[inner & (np.abs(planes) < 0.05)] = FAT  # fat planes between muscles
    del planes, outer
    labels[(ellipsoid(p, (-8.0, -5.0, 0.0), (75.0, 55.0, 58.0)) < 0) & inner] = FAT  # pelvic cavity fat

    # Bowel loops above the bladder, with gas floating anteriorly (patient supine: -y is up).
    for _ in range(3):
        start = (rng.uniform(25, 60), rng.uniform(-45, -5), rng.uniform(-45, 45))
        end = (start[0] + rng.uniform(-15, 15), start[1] + rng.uniform(-15, 15), start[2] + rng.uniform(-35, 35))
        _hollow_bowel(rng, labels, p, inner, [start, end], rng.uniform(10, 14), rng.uniform(0.2, 0.6))
    if not male:  # anteverted uterus resting on the bladder
        labels[(ellipsoid(turned(p, (12.0, -12.0, 0.0), (0, 1), -30.0), (12.0, -12.0, 0.0), (32.0, 18.0, 26.0)) < 0)
               & inner] = ORGAN
    bladder = ellipsoid(p, (-18.0, -40.0, 0.0), (30.0 * fill, 26.0 * fill, 38.0 * fill))
    labels[(bladder < 3.0) & inner] = ORGAN  # detrusor wall
    labels[(bladder < 0) & inner] = URINE
    del bladder
    if male:
        labels[(ellipsoid(p, (-18.0 - 30.0 * fill - 16.0, -30.0, 0.0), (15.0, 13.0, 18.0)) < 0) & inner] = ORGAN
    rectum = [(-80.0, 30.0, 0.0), (-35.0, 45.0, 0.0), (15.0, 50.0, rng.uniform(-8, 8))]
    _hollow_bowel(rng, labels, p, inner, rectum, rng.uniform(13.0, 17.0), rng.uniform(0.2, 0.7))

    _pelvic_bones(rng, labels, p)
    return labels, body, params


def _hollow_bowel(rng: np.random.Generator, labels: np.ndarray, p: np.ndarray, inner: np.ndarray,
                  path: Sequence[Sequence[float]], radius: float, gas_fraction: float) -> None:
    """A bowel segment along ``path``: 3 mm wall, contents, and gas above an air-fluid level."""
    tube = capsule(p, path[0], path[1], radius)
    for a, b in zip(path[1:-1], path[2:]):
        tube = smooth_union(tube, capsule(p, a, b, radius), 6.0)
    labels[(tube < 0) & inner] = ORGAN
    lumen = (tube < -3.0) & inner
    # Gas fills the non-dependent (anterior) part: y below the centre line plus a level.
    zs = [q[0] for q in path]
    order = np.argsort(zs)
    centre_y = np.interp(p[0], np.asarray(zs)[order], np.asarray([q[1] for q in path])[order])
    level = (1.0 - 2.0 * gas_fraction) * (radius - 3.0)
    labels[lumen & (p[1] - centre_y < level)] = GAS


def _pelvic_bones(rng: np.random.Generator, labels: np.ndarray, p: np.ndarray) -> None:
    """Iliac wings, sacrum, L5, acetabula, femoral heads, necks and shafts, pubic and ischial rings."""
    hip = rng.uniform(84.0, 92.0)
    cortex = rng.uniform(1.8, 2.6)
    for side in (-1.0, 1.0):
        centre = (40.0, 18.0, side * 78.0)
        frame = turned(turned(p, centre, (1, 2), -side * 42.0), centre, (0, 2), side * 14.0)
        _shell(labels, rounded_box(frame, centre, (34.0, 42.0, 3.5), 3.5), cortex)  # iliac wing
        neck_end = (-48.0, 6.0, side * (hip + 32.0))
        femur = smooth_union(capsule(p, (-25.0, 0.0, side * hip), neck_end, 15.0),
                             capsule(p, neck_end, (-400.0, 12.0, side * (hip + 20.0)), 14.0), 8.0)
        _shell(labels, femur, 2.5 + 3.5 * np.clip((-50.0 - p[0]) / 25.0, 0.0, 1.0))  # thick shaft cortex
        medial = (np.abs(p[2]) < hip + 6.0) & (p[0] > -36.0)
        socket = ellipsoid(p, (-25.0, 0.0, side * hip), (31.0, 31.0, 31.0))
        _shell(labels, socket, cortex, medial & (side * p[2] > 0))
        labels[(socket < -5.0) & medial & (side * p[2] > 0)] = MUSCLE  # joint cartilage
        _shell(labels, ellipsoid(p, (-25.0, 0.0, side * hip), (24.0, 24.0, 24.0)), cortex)  # femoral head
        ring = torus(turned(p, (-58.0, -18.0, side * 46.0), (1, 2), side * 20.0), (-58.0, -18.0, side * 46.0), 2,
                     24.0, 8.0)
        ring = smooth_union(ring, capsule(p, (-60.0, -40.0, side * 40.0), (-64.0, -58.0, side * 5.0), 8.5), 5.0)
        _shell(labels, ring, cortex)  # obturator ring (pubic and ischial rami) and pubic body
    sacrum = turned(p, (22.0, 72.0, 0.0), (0, 1), 30.0)
    _shell(labels, rounded_box(sacrum, (22.0, 72.0, 0.0), (38.0, 8.0, 30.0), 6.0), cortex)
    _shell(labels, capsule(p, (62.0, 42.0, 0.0), (120.0, 35.0, 0.0), 19.0), cortex)  # L5 body


# --------------------------------------------------------------------------- intensities
def _values(rng: np.random.Generator, table: dict[int, tuple[float, float, float, float]],
            relative: bool) -> np.ndarray:
    """(n_tissues, 3) per-case mean, fine and coarse texture amplitude per label value."""
    values = np.zeros((len(tissues.TISSUE_NAMES), 3), np.float32)
    for label, (mean, spread, fine, coarse) in table.items():
        value = mean * (1.0 + spread * rng.standard_normal()) if relative else mean + spread * rng.standard_normal()
        values[label] = (value, fine * value, coarse * value) if relative else (value, fine, coarse)
    return values


def _bias_field(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """A receive-coil bias: exp of a random quadratic polynomial of position, std 6-12% in log."""
    u = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    log_bias = np.zeros(shape, np.float32)
    for axis in range(3):
        view = [1, 1, 1]
        view[axis] = shape[axis]
        line = u[axis].reshape(view)
        log_bias = log_bias + np.float32(rng.normal()) * line + np.float32(rng.normal(0, 0.7)) * line * line
    cross = rng.normal(0, 0.5)
    log_bias = log_bias + np.float32(cross) * u[1].reshape(1, -1, 1) * u[2].reshape(1, 1, -1)
    log_bias -= log_bias.mean()
    log_bias *= np.float32(rng.uniform(0.06, 0.12) / max(float(log_bias.std()), 1e-6))
    return np.exp(log_bias)


def _images(rng: np.random.Generator, labels: np.ndarray, spacing: Sequence[float],
            kind: str) -> tuple[np.ndarray, np.ndarray]:
    """CT (HU) and T1w MR from the labels (module docstring)."""
    child = kind == "small_head"
    ct_table = {**CT_TABLE, **(CHILD_CT if child else {})}
    mr_table = {**MR_TABLE, **(CHILD_MR if child else {})}
    shared = random_field(rng, labels.shape, spacing, 25.0)
    ct_values = _values(rng, ct_table, relative=False)
    ct = ct_values[labels, 0] + ct_values[labels, 1] * random_field(rng, labels.shape, spacing, 8.0)
    ct += ct_values[labels, 2] * shared
    ct = gaussian_filter(ct, (0.55 * 2.5 / spacing[0], 0.45, 0.45))
    noise = gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), (0.0, 0.8, 0.8))
    noise_hu = rng.uniform(10.0, 22.0) if kind == "pelvis" else rng.uniform(4.0, 9.0)
    ct += noise * np.float32(noise_hu / max(float(noise.std()), 1e-6))
    mr_values = _values(rng, mr_table, relative=True)
    mr = mr_values[labels, 0] + mr_values[labels, 1] * random_field(rng, labels.shape, spacing, 8.0)
    mr += mr_values[labels, 2] * shared
    mr = gaussian_filter(np.maximum(mr, 0.0), (0.6 * 2.5 / spacing[0], 0.6, 0.6)) * _bias_field(rng, labels.shape)
    mr = _rician(rng, mr, float(rng.uniform(0.01, 0.025) * mr_values[FAT, 0]))
    return np.clip(ct, -1024.0, 3071.0).astype(np.float32), mr.astype(np.float32)


# --------------------------------------------------------------------------- public API
def generate_case(kind: str, seed: int, shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None, name: str | None = None) -> PhantomCase:
    """One held-out paired case of ``kind`` (:data:`KINDS`), deterministic in ``seed``.

    ``shape`` (z, y, x) and ``spacing`` (z, y, x) mm default to :data:`DEFAULT_GRIDS`; the
    anatomy keeps its size in mm, so a smaller field of view crops it.
    """
    if kind not in KINDS:
        raise DataError(f"unknown held-out kind {kind!r}; choose from {', '.join(KINDS)}")
    default_shape, default_spacing = DEFAULT_GRIDS[kind]
    shape = tuple(int(v) for v in (shape or default_shape))
    spacing = tuple(float(v) for v in (spacing or default_spacing))
    if len(shape) != 3 or min(shape) < 8:
        raise DataError(f"held-out shape must be three sizes of at least 8 voxels, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DataError(f"held-out spacing must be three positive mm values, got {spacing}")
    if seed < 0:
        raise DataError(f"held-out seed must be zero or positive, got {seed}")
    started = time.perf_counter()
    rng = np.random.default_rng([seed, KINDS.index(kind), _SALT])
    if kind == "pelvis":
        scale = np.array([1.0, *rng.uniform(0.92, 1.06, 2)])
        p, pose = _anatomy_grid(rng, shape, spacing, (-5.0, 5.0, 0.0), scale, 3.0)
        labels, body, params = _pelvis(rng, p, shape, spacing)
    else:
        child = kind == "small_head"
        scale = (rng.uniform(0.8, 0.86) if child else rng.uniform(0.96, 1.04)) * rng.uniform(0.97, 1.03, 3)
        p, pose = _anatomy_grid(rng, shape, spacing, (33.0, 3.0, 0.0), scale, 6.0)
        labels, body, params = _head(rng, p, shape, spacing, child)
    del p
    labels[~body] = AIR  # nothing painted outside the skin
    ct, mr = _images(rng, labels, spacing, kind)
    present = sorted(int(v) for v in np.unique(labels))
    origin_xyz = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape[::-1], spacing[::-1]))
    info = {
        "kind": kind, "seed": int(seed), "grid": {"shape": list(shape), "spacing_mm": list(spacing)},
        "pose": pose,
        "anatomy": {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in params.items()},
        "generator": "heldout", "note": NOTE,
    }
    log.debug("held-out %s seed %d generated in %.2f s", kind, seed, time.perf_counter() - started)
    return PhantomCase(
        name=name or f"heldout_{kind}_{seed}", ct=ct, mr=mr, mask=dilate(body),
        spacing=spacing, origin=origin_xyz, info=info, labels=labels,  # type: ignore[arg-type]
        label_names={label: tissues.TISSUE_NAMES[label] for label in present},
    )
