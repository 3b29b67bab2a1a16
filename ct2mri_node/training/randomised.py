"""Domain-randomised paired CT/MR cases (after SynthSeg, Billot et al. 2023, Med Image Anal 86:102789).

Why: a CT->MR model trained on one fixed anatomy learns that anatomy. Here every case draws a new
tissue layout (body outline, layer thicknesses, bones, organs, cavities), new tissue values, a new
scanner grid, new noise, blur and bias, so that the model has to learn the tissue -> signal
mapping rather than one shape. Unlike SynthSeg, tissue values are drawn from physiological ranges
(not uniformly over all intensities): the CT must stay CT-like and the MR T1-weighted.

Per-case tissue values, drawn uniformly from (low, high):

=============  ===============  ==================  ======================================
tissue         CT HU            T1w (fat ~ 1)       label name (:mod:`.tissues`)
=============  ===============  ==================  ======================================
air            -1000            0.00 .. 0.03        air
bowel gas      -1000 .. -700    0.00 .. 0.03        bowel_gas
cortical bone  700 .. 1900      0.00 .. 0.04        cortical_bone
CSF            0 .. 15          0.07 .. 0.18        csf
urine          0 .. 20          0.07 .. 0.18        urine
eye            0 .. 20          0.07 .. 0.18        eye
muscle         35 .. 60         0.30 .. 0.45        muscle
skin           20 .. 60         0.30 .. 0.45        skin
organ          30 .. 65         0.35 .. 0.55        organ
grey matter    35 .. 45         0.40 .. 0.52        grey_matter
white matter   22 .. 32         0.60 .. 0.75        white_matter
marrow         150 .. 500       0.55 .. 0.85        marrow
fat            -120 .. -70      0.85 .. 1.00        fat
=============  ===============  ==================  ======================================

Sources: CT values are the usual textbook Hounsfield ranges (Buzug, *Computed Tomography*, 2008;
brain: grey 35-45, white 22-32 HU); T1w values are relative spin-echo/gradient-echo T1w signal
from 1.5-3 T relaxation times (Stanisz et al. 2005, MRM 54:507; Bojorquez et al. 2017, MRI 35:69),
scaled so that fat is about 1. The T1w ranges do not overlap where an order matters, so that
white > grey > CSF, fat > muscle > urine, marrow > muscle and cortical bone/air darkest hold for
every draw. The MR is written as ``signal * 1000`` (arbitrary units) times a bias field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from . import tissues
from .metrics import gaussian_filter
from .phantoms import (
    MISALIGNED_FRACTION,
    PhantomCase,
    Pose,
    Tissue,
    _dilate,
    _paint_bone,
    _paint_long_bone,
    _rician,
    _rotated,
    anatomy_coordinates,
    misalign_slices,
    random_field,
    superquadric,
    tube,
)

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("head", "pelvis", "abdomen")
#: Label of skin (the phantom labels of :class:`.phantoms.Tissue` plus this one).
SKIN = 12
#: MR scale: relative T1w signal times this gives the written MR (arbitrary units).
MR_SCALE = 1000.0
#: Grid caps that keep a case small (voxels): in-plane (y and x) and slices.
MAX_INPLANE = 160
MAX_SLICES = 80
#: Spacing ranges (mm): in-plane and between slices.
INPLANE_MM = (0.5, 3.0)
SLICE_MM = (1.0, 5.0)
#: Field of view per kind (mm): (z extent range, in-plane y extent range, x/y aspect range).
FOV_MM: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "head": ((140.0, 220.0), (200.0, 260.0), (0.85, 1.0)),
    "pelvis": ((120.0, 260.0), (280.0, 380.0), (1.1, 1.4)),
    "abdomen": ((150.0, 300.0), (300.0, 400.0), (1.1, 1.4)),
}

#: CT HU (low, high) per label, drawn uniformly per case.
CT_RANGES: dict[int, tuple[float, float]] = {
    Tissue.AIR: (-1000.0, -1000.0),
    Tissue.GAS: (-1000.0, -700.0),
    Tissue.CORTICAL: (700.0, 1900.0),
    Tissue.CSF: (0.0, 15.0),
    Tissue.URINE: (0.0, 20.0),
    Tissue.EYE: (0.0, 20.0),
    Tissue.MUSCLE: (35.0, 60.0),
    SKIN: (20.0, 60.0),
    Tissue.ORGAN: (30.0, 65.0),
    Tissue.GREY: (35.0, 45.0),
    Tissue.WHITE: (22.0, 32.0),
    Tissue.TRABECULAR: (150.0, 500.0),
    Tissue.FAT: (-120.0, -70.0),
}
#: Relative T1w signal (low, high) per label (fat ~ 1), drawn uniformly per case.
MR_RANGES: dict[int, tuple[float, float]] = {
    Tissue.AIR: (0.0, 0.03),
    Tissue.GAS: (0.0, 0.03),
    Tissue.CORTICAL: (0.0, 0.04),
    Tissue.CSF: (0.07, 0.18),
    Tissue.URINE: (0.07, 0.18),
    Tissue.EYE: (0.07, 0.18),
    Tissue.MUSCLE: (0.30, 0.45),
    SKIN: (0.30, 0.45),
    Tissue.ORGAN: (0.35, 0.55),
    Tissue.GREY: (0.40, 0.52),
    Tissue.WHITE: (0.60, 0.75),
    Tissue.TRABECULAR: (0.55, 0.85),
    Tissue.FAT: (0.85, 1.0),
}
#: CT texture amplitude (HU, before a per-case factor of 0.5..1.5) per label.
CT_TEXTURE: dict[int, float] = {
    Tissue.GAS: 40.0, Tissue.CORTICAL: 100.0, Tissue.TRABECULAR: 50.0, Tissue.FAT: 5.0,
    Tissue.MUSCLE: 4.0, SKIN: 4.0, Tissue.ORGAN: 4.0, Tissue.GREY: 1.5, Tissue.WHITE: 1.5,
}
#: T1w texture amplitude (relative to the tissue's value) per label.
MR_TEXTURE: dict[int, float] = {
    Tissue.CORTICAL: 0.2, Tissue.TRABECULAR: 0.08, Tissue.FAT: 0.03, Tissue.MUSCLE: 0.04, SKIN: 0.04,
    Tissue.ORGAN: 0.05, Tissue.GREY: 0.02, Tissue.WHITE: 0.02,
}
#: Ordered pairs (brighter, darker) that every T1w draw satisfies.
T1_ORDERS: tuple[tuple[str, str], ...] = (
    (tissues.WHITE_MATTER, tissues.GREY_MATTER), (tissues.GREY_MATTER, tissues.CSF),
    (tissues.FAT, tissues.MUSCLE), (tissues.MUSCLE, tissues.URINE), (tissues.MARROW, tissues.MUSCLE),
    (tissues.MUSCLE, tissues.CORTICAL_BONE), (tissues.CSF, tissues.CORTICAL_BONE), (tissues.CSF, tissues.AIR),
)
#: Tissue names of the labels.
LABEL_NAMES: dict[int, str] = {
    Tissue.AIR: tissues.AIR, Tissue.FAT: tissues.FAT, Tissue.MUSCLE: tissues.MUSCLE,
    Tissue.CORTICAL: tissues.CORTICAL_BONE, Tissue.TRABECULAR: tissues.MARROW, Tissue.GREY: tissues.GREY_MATTER,
    Tissue.WHITE: tissues.WHITE_MATTER, Tissue.CSF: tissues.CSF, Tissue.EYE: tissues.EYE, Tissue.URINE: tissues.URINE,
    Tissue.GAS: tissues.GAS, Tissue.ORGAN: tissues.ORGAN, SKIN: tissues.SKIN,
}
NOTE = "synthetic domain-randomised data for training and testing; not patient data"


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


# --------------------------------------------------------------------------- grid and pose
def random_grid(rng: np.random.Generator, kind: str, shape: Sequence[int] | None,
                spacing: Sequence[float] | None) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """A random spacing and a field of view capped at :data:`MAX_SLICES` x :data:`MAX_INPLANE`^2.

    A fine spacing thus gives a small field of view that may cut through the body.
    """
    (z_lo, z_hi), (y_lo, y_hi), (a_lo, a_hi) = FOV_MM[kind]
    fov = (_u(rng, z_lo, z_hi), _u(rng, y_lo, y_hi))
    fov = (fov[0], fov[1], fov[1] * _u(rng, a_lo, a_hi))
    inplane, between = _u(rng, *INPLANE_MM), _u(rng, *SLICE_MM)
    return capped_grid(fov, (between, inplane, inplane) if spacing is None else spacing, shape)


def capped_grid(fov_mm: Sequence[float], spacing: Sequence[float], shape: Sequence[int] | None = None,
                caps: Sequence[int] = (MAX_SLICES, MAX_INPLANE, MAX_INPLANE),
                ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The grid (shape, spacing; z, y, x) that covers ``fov_mm`` at ``spacing`` with 16 to ``caps`` voxels
    per axis, or ``shape`` if given. Draws nothing; raises :class:`DataError` for a bad shape or spacing.
    """
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DataError(f"spacing must be three positive mm values, got {spacing}")
    if shape is None:
        shape = tuple(int(min(cap, max(16, round(f / s)))) for f, s, cap in zip(fov_mm, spacing, caps))
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise DataError(f"shape must be three sizes of at least 8 voxels, got {shape}")
    return shape, spacing  # type: ignore[return-value]


def _random_pose(rng: np.random.Generator, kind: str, shape: Sequence[int], spacing: Sequence[float]) -> Pose:
    tilt = 8.0 if kind == "head" else 4.0
    # Slide the slab along the body: a small field of view shows a random part of it.
    z_slide = 25.0 if kind == "head" else 60.0
    return Pose(
        angles_deg=(_u(rng, -15, 15), _u(rng, -tilt, tilt), _u(rng, -tilt, tilt)),
        translation_mm=(_u(rng, -z_slide, z_slide), _u(rng, -12, 12), _u(rng, -12, 12)),
        scale=_u(rng, 0.9, 1.1),
    )


# --------------------------------------------------------------------------- anatomy
def _layers(labels: np.ndarray, c: np.ndarray, size: np.ndarray, exponent: float,
            wobble: np.ndarray, layers: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Paint nested shells (label, thickness mm) from the outside in; returns the outline and the
    inside of the last shell.

    One superquadric level is evaluated and thresholded per shell (shells are homothetic, so a
    thickness is exact at the mean radius), which keeps a many-layered body cheap.
    """
    finite = [float(r) for r in size if np.isfinite(r)]
    mean_radius = float(np.mean(finite))
    level = np.zeros(c.shape[1:], dtype=np.float32)
    for axis in range(3):
        if np.isfinite(size[axis]):
            level += np.abs(c[axis] / np.float32(size[axis])) ** np.float32(exponent)
    level **= np.float32(1.0 / exponent)
    level -= wobble / np.float32(mean_radius)
    depth = 0.0
    outline = inside = level < 1.0
    for label, thickness in layers:
        labels[inside] = label
        depth += thickness
        inside = level < 1.0 - depth / mean_radius
    return outline, inside


def _head(rng: np.random.Generator, c: np.ndarray, shape: Sequence[int],
          spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Head: scalp (skin, fat, muscle), skull (tables around diploe), CSF, brain, face cavities."""
    labels = np.zeros(shape, dtype=np.uint8)
    size = np.array([_u(rng, 95, 115), _u(rng, 85, 100), _u(rng, 68, 80)])
    exponent = _u(rng, 2.0, 2.5)
    wobble = _u(rng, 1.0, 3.0) * random_field(rng, shape, spacing, 60.0)
    thick = {"skin": _u(rng, 1.0, 2.5), "fat": _u(rng, 1.5, 5.0), "muscle": _u(rng, 0.5, 3.0),
             "outer_table": _u(rng, 1.0, 2.5), "diploe": _u(rng, 1.5, 5.0), "inner_table": _u(rng, 1.0, 2.5),
             "csf": _u(rng, 1.0, 4.0)}
    body, cranium = _layers(labels, c, size, exponent, wobble, [
        (SKIN, thick["skin"]), (Tissue.FAT, thick["fat"]), (Tissue.MUSCLE, thick["muscle"]),
        (Tissue.CORTICAL, thick["outer_table"]), (Tissue.TRABECULAR, thick["diploe"]),
        (Tissue.CORTICAL, thick["inner_table"])])
    cavity = size - sum(v for k, v in thick.items() if k != "csf")
    z, y = c[0], c[1]
    base_z = _u(rng, -36, -22)
    below = ((z < base_z - 4) & (y < _u(rng, -10, 0))) | (z < base_z - 34)  # face and neck
    plate = ((z < base_z) & (y < 0)) | (z < base_z - 30)  # skull base above them
    labels[cranium & plate] = Tissue.CORTICAL
    labels[cranium & below] = Tissue.MUSCLE
    inside = cranium & ~plate
    labels[inside] = Tissue.CSF
    brain = superquadric(c, (0, 0, 0), cavity - thick["csf"], 2.0,
                         _u(rng, 1.0, 3.0) * random_field(rng, shape, spacing, 40.0)) & inside
    labels[brain] = Tissue.GREY
    gyri = random_field(rng, shape, spacing, _u(rng, 12.0, 25.0))
    cortex = _u(rng, 9.0, 16.0)
    white = superquadric(c, (0, 0, 0), cavity - thick["csf"] - cortex, 2.0, _u(rng, 2.0, 6.0) * gyri) & brain
    labels[white] = Tissue.WHITE
    sulci = _u(rng, -1.6, -1.0)
    labels[brain & (gyri < sulci) & ~white] = Tissue.CSF
    ventricle = _u(rng, 0.6, 1.6)
    for side in (-1.0, 1.0):
        centre = (_u(rng, 8, 16), _u(rng, -4, 4), side * _u(rng, 6, 12))
        rot = _rotated(c, centre, (side * _u(rng, 0, 15), _u(rng, -8, 8), 0.0))
        radii = (_u(rng, 7, 12) * ventricle, _u(rng, 18, 28), _u(rng, 3.5, 6) * ventricle)
        labels[superquadric(rot, centre, radii) & brain] = Tissue.CSF
    labels[superquadric(c, (_u(rng, 0, 4), _u(rng, 2, 6), 0), (9, 10, 1.5 * ventricle)) & brain] = Tissue.CSF
    eye_z, eye_y = base_z - _u(rng, 12, 18), -size[1] + _u(rng, 22, 30)
    for side in (-1.0, 1.0):
        centre = (eye_z, eye_y, side * _u(rng, 26, 34))
        labels[superquadric(c, centre, (17, 17, 17)) & body] = Tissue.FAT  # orbit fat
        labels[superquadric(c, (centre[0], centre[1] - 3, centre[2]), (11.5, 11.5, 11.5)) & body] = Tissue.EYE
    sinuses = []
    for _ in range(int(rng.integers(1, 5))):  # air cavities (frontal, ethmoid, maxillary sinuses)
        centre = (base_z + _u(rng, -40, 8), -size[1] + _u(rng, 20, 45), _u(rng, -25, 25))
        radii = np.array([_u(rng, 6, 16), _u(rng, 6, 16), _u(rng, 5, 14)])
        cavity_mask = superquadric(c, centre, radii + 2.0) & body & ~brain
        labels[cavity_mask] = Tissue.CORTICAL
        labels[superquadric(c, centre, radii) & cavity_mask] = Tissue.AIR
        sinuses.append({"centre_mm": list(centre), "radii_mm": radii.round(1).tolist()})
    layout = {"size_mm": size.round(1).tolist(), "exponent": exponent,
              "thickness_mm": {k: round(v, 2) for k, v in thick.items()}, "cortex_mm": cortex,
              "ventricle_scale": ventricle, "skull_base_z_mm": base_z, "sinuses": sinuses}
    return labels, body, layout


def _trunk(rng: np.random.Generator, labels: np.ndarray, c: np.ndarray, shape: Sequence[int],
           spacing: Sequence[float], size_yx: tuple[tuple[float, float], tuple[float, float]],
           fat_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Body cylinder with skin, subcutaneous fat and a muscle layer; returns body, inner cavity."""
    size = np.array([np.inf, _u(rng, *size_yx[0]), _u(rng, *size_yx[1])])
    exponent = _u(rng, 2.0, 3.0)
    wobble = _u(rng, 2.0, 7.0) * random_field(rng, shape, spacing, 80.0)
    thick = {"skin": _u(rng, 1.0, 2.5), "fat": _u(rng, *fat_mm), "muscle": _u(rng, 8.0, 25.0)}
    body, cavity = _layers(labels, c, size, exponent, wobble,
                     [(SKIN, thick["skin"]), (Tissue.FAT, thick["fat"]), (Tissue.MUSCLE, thick["muscle"])])
    labels[cavity] = Tissue.FAT
    planes = random_field(rng, shape, spacing, _u(rng, 20.0, 40.0)) > _u(rng, 1.1, 1.6)
    labels[~cavity & (labels == Tissue.MUSCLE) & planes] = Tissue.FAT  # fat planes between muscles
    layout = {"size_mm": size[1:].round(1).tolist(), "exponent": exponent,
              "thickness_mm": {k: round(v, 2) for k, v in thick.items()}}
    return body, cavity, layout


def _spine(rng: np.random.Generator, labels: np.ndarray, c: np.ndarray, y: float, cortex: float) -> dict[str, Any]:
    """Vertebral bodies (cortex around marrow) with discs, spinal canal (CSF), posterior arch."""
    radii = (np.inf, _u(rng, 13, 18), _u(rng, 17, 24))
    _paint_bone(labels, c, (0, y, 0), radii, cortex)
    period = _u(rng, 26, 34)
    disc = np.cos(2 * np.pi * (c[0] / period + rng.random())) > _u(rng, 0.6, 0.8)
    labels[superquadric(c, (0, y, 0), radii) & disc] = Tissue.ORGAN  # intervertebral discs
    canal_y = y + radii[1] + _u(rng, 8, 11)
    canal = _u(rng, 6, 9)
    labels[superquadric(c, (0, canal_y, 0), (np.inf, canal + 3 + cortex, canal + 5 + cortex))] = Tissue.CORTICAL
    labels[superquadric(c, (0, canal_y, 0), (np.inf, canal + 3, canal + 5))] = Tissue.TRABECULAR
    labels[superquadric(c, (0, canal_y, 0), (np.inf, canal, canal))] = Tissue.CSF
    return {"y_mm": y, "radii_mm": [float(r) for r in radii[1:]], "disc_period_mm": period}


def _pelvis(rng: np.random.Generator, c: np.ndarray, shape: Sequence[int],
            spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pelvis: pelvic bones, femoral heads and shafts, sacrum, bladder, prostate/uterus, rectum."""
    labels = np.zeros(shape, dtype=np.uint8)
    body, cavity, layout = _trunk(rng, labels, c, shape, spacing, ((85.0, 125.0), (125.0, 175.0)), (8.0, 40.0))
    cortex = _u(rng, 1.0, 3.5)
    hip_x, head_r = _u(rng, 75, 95), _u(rng, 20, 27)
    head_z, head_y = _u(rng, -40, -20), _u(rng, -15, 0)
    for side in (-1.0, 1.0):
        head = (head_z, head_y, side * hip_x)
        wing_c = (head_z + _u(rng, 55, 75), head_y + _u(rng, 25, 40), side * (hip_x - _u(rng, 0, 15)))
        wing = _rotated(c, wing_c, (side * _u(rng, 25, 45), 0.0, side * _u(rng, 0, 20)))
        _paint_bone(labels, wing, wing_c, (_u(rng, 45, 60), _u(rng, 40, 55), _u(rng, 8, 13)), cortex)
        _paint_bone(labels, c, head, (head_r + 8, head_r + 8, head_r + 8), cortex)  # acetabulum
        labels[superquadric(c, head, (head_r + 2, head_r + 2, head_r + 2))] = Tissue.MUSCLE  # joint, cartilage
        _paint_bone(labels, c, head, (head_r, head_r, head_r), cortex)
        trochanter = (head_z - _u(rng, 15, 25), head_y + _u(rng, 0, 10), side * (hip_x + _u(rng, 30, 45)))
        _paint_long_bone(labels, c, head, trochanter, _u(rng, 11, 16), cortex)
        _paint_long_bone(labels, c, trochanter, (head_z - 250.0, head_y, side * (hip_x + 45)),
                         _u(rng, 11, 16), cortex + 1.0)
        _paint_long_bone(labels, c, (head_z - 8, head_y - 20, side * (hip_x - 12)),
                         (head_z - 14, head_y - 60, side * _u(rng, 4, 10)), _u(rng, 7, 11), cortex)
    sacrum_c = (head_z + _u(rng, 50, 70), _u(rng, 65, 85), 0.0)
    sacrum = _rotated(c, sacrum_c, (0.0, _u(rng, 15, 35), 0.0))
    _paint_bone(labels, sacrum, sacrum_c, (_u(rng, 40, 55), _u(rng, 12, 18), _u(rng, 38, 50)), cortex)
    bladder = np.array([head_z + _u(rng, 0, 25), _u(rng, -55, -30), _u(rng, -12, 12)])
    fill = _u(rng, 0.5, 1.3)
    radii = np.array([_u(rng, 28, 38), _u(rng, 25, 33), _u(rng, 35, 45)]) * fill
    wall = _u(rng, 2.0, 5.0)
    bladder_wobble = _u(rng, 1.0, 4.0) * random_field(rng, shape, spacing, 40.0)
    labels[superquadric(c, bladder, radii + wall, 2.0, bladder_wobble) & cavity] = Tissue.MUSCLE
    labels[superquadric(c, bladder, radii, 2.0, bladder_wobble) & cavity] = Tissue.URINE
    organ = "prostate" if rng.random() < 0.5 else "uterus"
    if organ == "prostate":
        centre = (bladder[0] - radii[0] - _u(rng, 10, 18), bladder[1] + _u(rng, 5, 15), 0.0)
        labels[superquadric(c, centre, (_u(rng, 13, 20), _u(rng, 12, 18), _u(rng, 16, 24))) & cavity] = Tissue.ORGAN
    else:
        centre = (bladder[0] + _u(rng, 15, 30), bladder[1] + _u(rng, 35, 55), _u(rng, -10, 10))
        rot = _rotated(c, centre, (0.0, _u(rng, -45, -15), _u(rng, -10, 10)))
        labels[superquadric(rot, centre, (_u(rng, 30, 45), _u(rng, 14, 22), _u(rng, 20, 32))) & cavity] = Tissue.ORGAN
    rectum_y = sacrum_c[1] - _u(rng, 30, 45)
    rel = np.stack([c[0], c[1] - _u(rng, 2, 6) * np.sin(c[0] / _u(rng, 20, 35)), c[2]])
    r = _u(rng, 12, 20)
    top = c[0] < sacrum_c[0]
    labels[superquadric(rel, (0, rectum_y, 0), (np.inf, r, r)) & top & cavity] = Tissue.MUSCLE
    lumen = superquadric(rel, (0, rectum_y, 0), (np.inf, r - 3.5, r - 3.5)) & top & cavity
    labels[lumen] = Tissue.ORGAN
    gas = _u(rng, -0.5, 1.0)
    labels[lumen & (random_field(rng, shape, spacing, 25.0) > gas)] = Tissue.GAS
    layout.update({"cortex_mm": cortex, "hip_x_mm": hip_x, "femoral_head_radius_mm": head_r,
                   "bladder_centre_mm": bladder.round(1).tolist(), "bladder_radii_mm": radii.round(1).tolist(),
                   "organ": organ, "rectum_radius_mm": r, "gas_threshold": gas})
    return labels, body, layout


def _abdomen(rng: np.random.Generator, c: np.ndarray, shape: Sequence[int],
             spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Abdomen: spine, paraspinal muscles, liver, spleen, kidneys, aorta, bowel loops with gas."""
    labels = np.zeros(shape, dtype=np.uint8)
    body, cavity, layout = _trunk(rng, labels, c, shape, spacing, ((90.0, 135.0), (130.0, 185.0)), (8.0, 45.0))
    size_y, size_x = layout["size_mm"]
    cortex = _u(rng, 1.0, 3.0)
    spine_y = size_y * _u(rng, 0.3, 0.45)
    layout["spine"] = _spine(rng, labels, c, spine_y, cortex)
    for side in (-1.0, 1.0):  # paraspinal muscles
        centre = (0.0, spine_y + _u(rng, 35, 50), side * _u(rng, 30, 45))
        labels[superquadric(c, centre, (np.inf, _u(rng, 18, 28), _u(rng, 18, 30))) & body
               & (labels != Tissue.CORTICAL) & (labels != Tissue.TRABECULAR)] = Tissue.MUSCLE
    wobble = _u(rng, 2.0, 6.0) * random_field(rng, shape, spacing, 50.0)
    organs: list[dict[str, Any]] = []

    def organ(name: str, centre: Sequence[float], radii: Sequence[float], label: int = Tissue.ORGAN) -> None:
        labels[superquadric(c, centre, radii, 2.0, wobble) & cavity] = label
        organs.append({"organ": name, "centre_mm": [round(float(v), 1) for v in centre],
                       "radii_mm": [round(float(v), 1) for v in radii]})

    organ("liver", (_u(rng, -20, 40), _u(rng, -25, 15), -size_x * _u(rng, 0.25, 0.45)),
          (_u(rng, 55, 90), _u(rng, 45, 75), _u(rng, 45, 70)))
    if rng.random() < 0.7:
        organ("spleen", (_u(rng, 0, 40), spine_y - _u(rng, 0, 25), size_x * _u(rng, 0.4, 0.6)),
              (_u(rng, 30, 55), _u(rng, 18, 30), _u(rng, 15, 25)))
    for side in (-1.0, 1.0):
        if rng.random() < 0.9:
            organ("kidney", (_u(rng, -40, 20), spine_y - _u(rng, -5, 10), side * _u(rng, 45, 65)),
                  (_u(rng, 40, 60), _u(rng, 18, 28), _u(rng, 20, 30)))
    labels[tube(c, (-400, spine_y - 25, 8), (400, spine_y - 25, 8), _u(rng, 8, 13)) & cavity] = Tissue.ORGAN  # aorta
    gas_field = random_field(rng, shape, spacing, 25.0)
    loops = int(rng.integers(3, 9))
    gas = _u(rng, -0.3, 1.2)
    for _ in range(loops):  # bowel loops: wall, lumen with gas
        start = (_u(rng, -120, 120), _u(rng, -size_y * 0.8, spine_y - 30), _u(rng, -size_x * 0.7, size_x * 0.7))
        end = (start[0] + _u(rng, -50, 50), start[1] + _u(rng, -40, 40), start[2] + _u(rng, -80, 80))
        r = _u(rng, 8, 18)
        labels[tube(c, start, end, r) & cavity] = Tissue.ORGAN
        labels[tube(c, start, end, r - 2.5) & cavity & (gas_field > gas)] = Tissue.GAS
    layout.update({"cortex_mm": cortex, "organs": organs, "bowel_loops": loops, "gas_threshold": gas})
    return labels, body, layout


# --------------------------------------------------------------------------- intensities
def draw_values(rng: np.random.Generator, ranges: dict[int, tuple[float, float]]) -> dict[int, float]:
    """One value per label, uniform in its range."""
    return {label: float(rng.uniform(low, high)) for label, (low, high) in ranges.items()}


def _table(values: dict[int, float]) -> np.ndarray:
    table = np.zeros(256, dtype=np.float32)
    for label, value in values.items():
        table[label] = value
    return table


def ct_from_labels(rng: np.random.Generator, labels: np.ndarray, spacing: Sequence[float],
                   hu: dict[int, float], base: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """CT (HU) from per-label values (or a given ``base`` map): texture, partial volume, noise."""
    texture_gain = _u(rng, 0.5, 1.5)
    tex = random_field(rng, labels.shape, spacing, _u(rng, 6.0, 16.0))
    ct = _table(hu)[labels] if base is None else base.astype(np.float32)
    ct = ct + texture_gain * _table(CT_TEXTURE)[labels] * tex
    blur = _u(rng, 0.5, 1.5)
    ct = gaussian_filter(ct, blur)
    noise_sd = _u(rng, 5.0, 30.0)
    noise = gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), _u(rng, 0.0, 0.8))
    ct += noise * (noise_sd / max(float(noise.std()), 1e-6))
    params = {"partial_volume_voxels": blur, "noise_sd_hu": noise_sd, "texture_gain": texture_gain}
    return np.clip(ct, -1024.0, 3071.0).astype(np.float32), params


def mr_from_labels(rng: np.random.Generator, labels: np.ndarray, spacing: Sequence[float],
                   t1: dict[int, float], base: np.ndarray | None = None
                   ) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, float]]:
    """T1w MR (x :data:`MR_SCALE`) from per-label values (or ``base``): texture, blur, bias,
    misaligned slices, Rician noise. Returns the MR, the misaligned slices and the parameters."""
    tex = random_field(rng, labels.shape, spacing, _u(rng, 6.0, 16.0))
    mr = _table(t1)[labels] if base is None else base.astype(np.float32)
    mr = mr * (1.0 + _table(MR_TEXTURE)[labels] * tex)
    blur = _u(rng, 0.5, 1.5)
    mr = gaussian_filter(mr, blur)
    bias_amplitude = _u(rng, 0.03, 0.15)
    bias = np.exp(bias_amplitude * random_field(rng, labels.shape, spacing, _u(rng, 250.0, 400.0)))
    mr = np.maximum(mr, 0.0) * bias * MR_SCALE
    misaligned = misalign_slices(rng, mr, spacing, MISALIGNED_FRACTION)
    noise = _u(rng, 0.005, 0.025)
    mr = _rician(rng, mr.astype(np.float32), noise * MR_SCALE)
    params = {"partial_volume_voxels": blur, "bias_amplitude": bias_amplitude, "rician_sigma": noise * MR_SCALE}
    return mr, misaligned, params


def _named(values: dict[int, float], present: np.ndarray) -> dict[str, float]:
    return {LABEL_NAMES[k]: round(v, 4) for k, v in values.items() if present[k]}


# --------------------------------------------------------------------------- public API
PAINTERS = {"head": _head, "pelvis": _pelvis, "abdomen": _abdomen}


def generate_case(
    kind: str,
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    name: str | None = None,
) -> PhantomCase:
    """One domain-randomised CT/MR case of ``kind``, deterministic in ``seed``.

    ``shape``/``spacing`` (z, y, x), if given, override the random grid.
    """
    if kind not in KINDS:
        raise DataError(f"unknown randomised kind {kind!r}; choose from {', '.join(KINDS)}")
    if seed < 0:
        raise DataError(f"seed must be zero or positive, got {seed}")
    rng = np.random.default_rng([seed, KINDS.index(kind), 0x5EED])
    shape, spacing = random_grid(rng, kind, shape, spacing)
    pose = _random_pose(rng, kind, shape, spacing)
    coords = anatomy_coordinates(rng, shape, spacing, pose)
    labels, body, layout = PAINTERS[kind](rng, coords, shape, spacing)
    del coords
    hu, t1 = draw_values(rng, CT_RANGES), draw_values(rng, MR_RANGES)
    ct, ct_params = ct_from_labels(rng, labels, spacing, hu)
    mr, misaligned, mr_params = mr_from_labels(rng, labels, spacing, t1)
    present = np.bincount(labels.ravel(), minlength=256) > 0
    origin_xyz = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape[::-1], spacing[::-1]))
    info = {
        "family": "randomised", "kind": kind, "seed": seed, "shape": list(shape), "spacing_mm": list(spacing),
        "randomised": {
            "grid": "spacing and field of view (unless given)",
            "pose": {"angles_deg": list(pose.angles_deg), "translation_mm": list(pose.translation_mm),
                     "scale": pose.scale},
            "layout": layout, "ct": ct_params, "mr": mr_params,
            "ct_hu": _named(hu, present), "t1_relative": _named(t1, present),
        },
        "mr_scale": MR_SCALE,
        "misaligned_slices": misaligned,
        "note": NOTE,
    }
    return PhantomCase(
        name=name or f"randomised_{kind}_{seed}", ct=ct, mr=mr, mask=_dilate(body),
        spacing=spacing, origin=origin_xyz, info=info,  # type: ignore[arg-type]
        labels=labels, label_names={int(k): v for k, v in LABEL_NAMES.items()},
    )
