"""Independent paired CT/T1w-MR cases, for evaluation only: no training or tuning case comes from here.

Why a second evaluation generator: the held-out family was written by the same hands as the training
families and shares their taste (folded cortex, textures, smooth unions). This one speaks another
shape language on purpose, the plainest there is: every structure is an ellipsoid block, layered
by shrinking or growing its radii, with no texture at all. Each tissue is one constant per case
(small per-case variation: +-3 % in HU, +-5 % in T1w), then partial volume (a Gaussian blur of
half a voxel), then white CT noise of 5-15 HU SD (drawn per case) and, for the MR, Rician noise
of 1-2 % of fat. So a model's blotches, tiles and wrong tissue order stand out against a truth that
is uniform inside every tissue.

- ``small_head``: a child's cranium: thin skull, scalp, CSF rim, grey over white matter, large
  ventricles, dense petrous blocks; no face;
- ``adult_head``: thick skull shells (cortical tables with marrow diploe between), scalp skin and
  fat, CSF rim, grey over white matter, large ventricles, petrous blocks, and a face block with
  orbits (fat, vitreous eyes) and maxillary air sinuses;
- ``pelvis``: skin, subcutaneous fat, muscle blocks, a large bladder of urine, prostate, femoral
  heads of fatty marrow in a cortical shell, pelvic bone blocks (cortex over marrow), femoral
  shafts with thick cortex and, in most cases, rectal gas.

Grid: in-plane pixel 0.8-3 mm and slice thickness 1-3 mm drawn per case; the matrix is chosen so
that the field of view covers the anatomy, capped at :data:`MAX_VOXELS` (a fine pixel then gets a
slab through the region every check needs, with thicker slices if need be). Random size and pose.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from . import tissues
from .metrics import gaussian_filter
from .phantoms import PhantomCase
from .tissue_order import dilate

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("small_head", "adult_head", "pelvis")
NOTE = "synthetic independent evaluation data, not patient data"
#: Mixed into the seed so that equal seeds of different families never share random numbers.
_SALT = 0x1DE9
#: Largest default grid, in voxels (a CPU translation stays quick).
MAX_VOXELS = 1_500_000
#: Ranges of the drawn grid: in-plane pixel and slice thickness (mm), CT noise SD (HU).
PIXEL_MM: tuple[float, float] = (0.8, 3.0)
SLICE_MM: tuple[float, float] = (1.0, 3.0)
CT_NOISE_HU: tuple[float, float] = (5.0, 15.0)
#: Rician noise SD of the MR, as a fraction of the fat value.
MR_NOISE: tuple[float, float] = (0.01, 0.02)
#: Partial volume: Gaussian blur SD, in voxels of each axis.
BLUR_VOXELS = 0.5

L: dict[str, int] = {name: index for index, name in enumerate(tissues.TISSUE_NAMES)}
AIR, GAS, FAT, MUSCLE = L[tissues.AIR], L[tissues.GAS], L[tissues.FAT], L[tissues.MUSCLE]
CORTEX, MARROW = L[tissues.CORTICAL_BONE], L[tissues.MARROW]
GREY, WHITE = L[tissues.GREY_MATTER], L[tissues.WHITE_MATTER]
CSF, URINE, ORGAN, EYE, SKIN = L[tissues.CSF], L[tissues.URINE], L[tissues.ORGAN], L[tissues.EYE], L[tissues.SKIN]

#: CT HU per tissue: (low, high) of the per-case base value, before the +-3 % spread.
CT_HU: dict[int, tuple[float, float]] = {
    AIR: (-1000.0, -1000.0), GAS: (-900.0, -900.0), FAT: (-100.0, -100.0), MUSCLE: (50.0, 50.0),
    CORTEX: (1200.0, 1200.0), MARROW: (260.0, 260.0), GREY: (40.0, 40.0), WHITE: (28.0, 28.0),
    CSF: (5.0, 5.0), URINE: (8.0, 8.0), ORGAN: (42.0, 42.0), EYE: (4.0, 10.0), SKIN: (40.0, 40.0),
}
#: Per-kind differences: skull diploe is denser than the femoral heads' fatty marrow; a child's
#: cortex is less mineralised.
CT_HU_KIND: dict[str, dict[int, tuple[float, float]]] = {
    "adult_head": {MARROW: (300.0, 400.0)},
    "small_head": {MARROW: (250.0, 320.0), CORTEX: (1000.0, 1100.0)},
    "pelvis": {},
}
#: T1w signal relative to fat = 0.90 (then scaled so that fat is about 1000).
T1W: dict[int, float] = {
    AIR: 0.0, GAS: 0.0, FAT: 0.90, MUSCLE: 0.45, CORTEX: 0.05, MARROW: 0.80, GREY: 0.55, WHITE: 0.75,
    CSF: 0.15, URINE: 0.10, ORGAN: 0.40, EYE: 0.19 * 0.90, SKIN: 0.55,
}
#: A child's skull holds red (cellular) marrow: darker than fatty marrow, still brighter than muscle.
T1W_KIND: dict[str, dict[int, float]] = {"small_head": {MARROW: 0.62}}
MR_SCALE = 1000.0 / 0.90
HU_SPREAD = 0.03
MR_SPREAD = 0.05

Vec3 = tuple[float, float, float]


# --------------------------------------------------------------------------- geometry
def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (z, y, x axes): yaw in the y-x plane, pitch in z-y, roll in z-x (degrees)."""
    def plane(a: int, b: int, degrees: float) -> np.ndarray:
        m = np.eye(3)
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
        return m
    return plane(1, 2, yaw) @ plane(0, 1, pitch) @ plane(0, 2, roll)


class Block:
    """A plain ellipsoid block in anatomy mm: ``centre``, semi-axes ``radii``, optionally turned.

    ``turn`` is (plane, degrees): the block's axes turned in the plane of two anatomy axes.
    """

    def __init__(self, centre: Sequence[float] | np.ndarray, radii: Sequence[float] | np.ndarray,
                 turn: tuple[tuple[int, int], float] | None = None) -> None:
        self.centre = np.asarray(centre, np.float32)
        self.radii = np.asarray(radii, np.float32)
        self.turn = turn

    def grown(self, mm: float) -> Block:
        """The same block with every semi-axis longer by ``mm`` (shorter when negative)."""
        return Block(self.centre, np.maximum(self.radii + np.float32(mm), 0.1), self.turn)

    def inside(self, p: np.ndarray) -> np.ndarray:
        """Boolean (z, y, x): the voxels whose anatomy coordinates ``p`` (3, z, y, x) lie inside."""
        rel = [p[axis] - self.centre[axis] for axis in range(3)]
        if self.turn is not None:
            (a, b), degrees = self.turn
            c, s = np.float32(math.cos(math.radians(degrees))), np.float32(math.sin(math.radians(degrees)))
            rel[a], rel[b] = c * rel[a] + s * rel[b], -s * rel[a] + c * rel[b]
        q = sum((rel[axis] / self.radii[axis]) ** 2 for axis in range(3))
        return q < 1.0

    def frame(self) -> np.ndarray:
        """(3, 3) matrix from anatomy offsets to the block's own axes."""
        m = np.eye(3)
        if self.turn is not None:
            (a, b), degrees = self.turn
            c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
            m[a, a], m[a, b], m[b, a], m[b, b] = c, s, -s, c
        return m


def _paint_bone(labels: np.ndarray, p: np.ndarray, block: Block, cortex_mm: float,
                where: np.ndarray | None = None) -> None:
    """Cortical bone in ``block``, fatty marrow inside its radii shrunk by ``cortex_mm``."""
    outer = block.inside(p) if where is None else block.inside(p) & where
    labels[outer] = CORTEX
    labels[outer & block.grown(-cortex_mm).inside(p)] = MARROW


# --------------------------------------------------------------------------- anatomy
def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _head_plan(rng: np.random.Generator, child: bool) -> dict[str, Any]:
    """Sizes of a head (mm). Anatomy axes: z up, y posterior, x left; origin near the brain's centre."""
    size = _u(rng, 0.94, 1.06)
    cavity = np.array([60.0, 72.0, 56.0] if child else [70.0, 86.0, 66.0]) * size * rng.uniform(0.97, 1.03, 3)
    plan: dict[str, Any] = {
        "cavity_centre": (20.0, 8.0, 0.0), "cavity_radii": cavity,
        "csf_rim_mm": _u(rng, 3.0, 4.5) if child else _u(rng, 2.0, 3.5),
        "grey_mm": _u(rng, 6.0, 8.0),
        "inner_table_mm": _u(rng, 1.5, 2.0) if child else _u(rng, 2.0, 3.0),
        "diploe_mm": _u(rng, 1.5, 2.5) if child else _u(rng, 3.5, 6.0),
        "outer_table_mm": _u(rng, 1.5, 2.5) if child else _u(rng, 2.5, 4.0),
        "scalp_fat_mm": _u(rng, 2.5, 4.0) if child else _u(rng, 3.5, 6.0),
        "skin_mm": _u(rng, 1.8, 2.5),
        "neck_fat_mm": _u(rng, 7.0, 12.0), "temporal_mm": _u(rng, 10.0, 14.0),
        # Large lateral ventricles (absolute size, so a child's are relatively larger).
        "ventricle_radii": (_u(rng, 12.0, 16.0), _u(rng, 26.0, 34.0), _u(rng, 7.5, 10.0)),
        "ventricle_x": _u(rng, 10.0, 13.0), "ventricle_yaw": _u(rng, 4.0, 12.0),
        "face": not child,
    }
    plan["skull_mm"] = plan["inner_table_mm"] + plan["diploe_mm"] + plan["outer_table_mm"]
    return plan


def _head_blocks(plan: dict[str, Any]) -> dict[str, Block]:
    """The outer blocks of a head (used for its field of view, then for painting)."""
    cavity = Block(plan["cavity_centre"], plan["cavity_radii"])
    rz, ry, rx = plan["cavity_radii"]
    cz, cy, _ = plan["cavity_centre"]
    outside = plan["skull_mm"] + plan["scalp_fat_mm"] + plan["skin_mm"]
    blocks = {"cavity": cavity, "cranium": cavity.grown(outside),
              "neck": Block((-110.0, 18.0, 0.0), (90.0, 0.62 * ry, 0.8 * rx))}
    for side, key in ((-1.0, "temporal_right"), (1.0, "temporal_left")):  # temporalis muscle under the scalp
        blocks[key] = Block((cz - 0.15 * rz, cy - 0.15 * ry, side * (rx + plan["skull_mm"])),
                            (0.42 * rz, 0.40 * ry, plan["temporal_mm"] + plan["scalp_fat_mm"] + plan["skin_mm"]))
    if plan["face"]:
        blocks["face"] = Block((-22.0, -30.0, 0.0), (48.0, 64.0, 64.0))
    return blocks


def _head(rng: np.random.Generator, p: np.ndarray, plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Head labels and body from the plan: scalp, soft blocks, then the cranium's layers over them."""
    blocks = _head_blocks(plan)
    cavity = blocks["cavity"]
    labels = np.zeros(p.shape[1:], np.uint8)
    skin = plan["skin_mm"]
    soft = [(block, plan["scalp_fat_mm"] if key.startswith("temporal") else plan["neck_fat_mm"])
            for key, block in blocks.items() if key not in ("cavity", "cranium")]
    body = blocks["cranium"].inside(p)
    for block, _ in soft:
        body |= block.inside(p)
    labels[body] = SKIN
    labels[blocks["cranium"].grown(-skin).inside(p)] = FAT
    for block, fat in soft:
        labels[block.grown(-skin).inside(p)] = FAT
        labels[block.grown(-skin - fat).inside(p)] = MUSCLE
    skull = cavity.grown(plan["skull_mm"])
    labels[skull.inside(p)] = CORTEX
    labels[cavity.grown(plan["inner_table_mm"] + plan["diploe_mm"]).inside(p)] = MARROW
    labels[cavity.grown(plan["inner_table_mm"]).inside(p)] = CORTEX
    labels[cavity.inside(p)] = CSF
    brain = cavity.grown(-plan["csf_rim_mm"])
    labels[brain.inside(p)] = GREY
    labels[brain.grown(-plan["grey_mm"]).inside(p)] = WHITE
    cz, cy, _ = plan["cavity_centre"]
    for side in (-1.0, 1.0):
        centre = (cz + 12.0, cy + 2.0, side * plan["ventricle_x"])
        labels[Block(centre, plan["ventricle_radii"], ((1, 2), side * plan["ventricle_yaw"])).inside(p)] = CSF
        # Petrous bones: dense, solid cortical blocks in the skull base.
        rz, ry, rx = plan["cavity_radii"]
        petrous = Block((cz - 0.72 * rz, cy + 0.12 * ry, side * 0.52 * rx), (8.0, 10.0, 22.0), ((1, 2), side * 40.0))
        labels[petrous.inside(p)] = CORTEX
    if plan["face"]:
        _face(rng, labels, p, plan)
    return labels, body


def _face(rng: np.random.Generator, labels: np.ndarray, p: np.ndarray, plan: dict[str, Any]) -> None:
    """Orbits (bony wall, fat, vitreous eye) and maxillary air sinuses with thin walls."""
    eye_r = _u(rng, 11.5, 12.5)
    eye_x = _u(rng, 30.0, 34.0)
    eye_z, eye_y = _u(rng, -24.0, -18.0), _u(rng, -74.0, -70.0)
    plan.update(eye_radius_mm=eye_r, eye_x_mm=eye_x)
    for side in (-1.0, 1.0):
        orbit = Block((eye_z, eye_y + 5.0, side * eye_x), (eye_r + 5.0, eye_r + 8.0, eye_r + 4.0))
        labels[orbit.grown(1.5).inside(p)] = CORTEX
        labels[orbit.inside(p)] = FAT
        labels[Block((eye_z, eye_y, side * eye_x), (eye_r, eye_r, eye_r)).inside(p)] = EYE
        sinus = Block((eye_z - 30.0, eye_y + 18.0, side * 24.0), (15.0, 15.0, 12.0))
        labels[sinus.grown(1.5).inside(p)] = CORTEX
        labels[sinus.inside(p)] = AIR


def _pelvis_plan(rng: np.random.Generator) -> dict[str, Any]:
    """Sizes of a pelvis (mm). Anatomy axes: z up, y posterior, x left; origin between the hips."""
    ry, rx = _u(rng, 95.0, 125.0), _u(rng, 150.0, 185.0)
    return {
        "body_radii": (260.0, ry, rx), "skin_mm": _u(rng, 1.8, 2.5), "fat_mm": _u(rng, 12.0, 32.0),
        "bladder_radii": (_u(rng, 35.0, 48.0), _u(rng, 30.0, 40.0), _u(rng, 40.0, 55.0)),
        "bladder_z": _u(rng, 18.0, 28.0),
        "femoral_head_mm": _u(rng, 22.0, 27.0), "hip_x_mm": _u(rng, 85.0, 95.0),
        "cortex_mm": _u(rng, 2.0, 3.0), "shaft_cortex_mm": _u(rng, 6.5, 8.5),
        "rectal_gas": bool(rng.random() < 0.75),
    }


def _pelvis_blocks(plan: dict[str, Any]) -> dict[str, Block]:
    return {"body": Block((0.0, 0.0, 0.0), plan["body_radii"])}


def _pelvis(rng: np.random.Generator, p: np.ndarray, plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Pelvis labels and body: fat, muscle blocks, organs, then bone blocks over them."""
    body_block = _pelvis_blocks(plan)["body"]
    _, ry, rx = plan["body_radii"]
    labels = np.zeros(p.shape[1:], np.uint8)
    body = body_block.inside(p)
    labels[body] = SKIN
    inner_fat = body_block.grown(-plan["skin_mm"]).inside(p)
    labels[inner_fat] = FAT
    inner = body_block.grown(-plan["skin_mm"] - plan["fat_mm"]).inside(p)
    for side in (-1.0, 1.0):
        muscles = [
            Block((10.0, 0.55 * ry, side * 0.42 * rx), (120.0, 0.36 * ry, 0.36 * rx)),  # gluteal
            Block((35.0, -0.05 * ry, side * 0.36 * rx), (110.0, 22.0, 24.0)),  # iliopsoas
            Block((-55.0, 0.15 * ry, side * 48.0), (38.0, 24.0, 18.0)),  # obturator / pelvic floor
            Block((45.0, -0.8 * ry, side * 38.0), (110.0, 9.0, 32.0)),  # rectus abdominis
            Block((-70.0, -0.1 * ry, side * (plan["hip_x_mm"] + 10.0)), (70.0, 45.0, 40.0)),  # thigh
        ]
        for block in muscles:
            labels[block.inside(p) & inner] = MUSCLE
    bladder = Block((plan["bladder_z"], -0.35 * ry, 0.0), plan["bladder_radii"])
    labels[bladder.grown(3.0).inside(p) & inner] = ORGAN
    labels[bladder.inside(p) & inner] = URINE
    prostate_z = plan["bladder_z"] - plan["bladder_radii"][0] - 14.0
    labels[Block((prostate_z, -0.12 * ry, 0.0), (16.0, 14.0, 20.0)).inside(p) & inner] = ORGAN
    rectum = Block((prostate_z + 25.0, 0.32 * ry, 0.0), (60.0, 17.0, 17.0))
    labels[rectum.inside(p) & inner] = ORGAN
    if plan["rectal_gas"]:
        labels[rectum.grown(-4.0).inside(p) & inner] = GAS
    _pelvic_bones(labels, p, plan)
    return labels, body


def _pelvic_bones(labels: np.ndarray, p: np.ndarray, plan: dict[str, Any]) -> None:
    """Iliac, sacral and pubic blocks, acetabula, femoral heads, necks and shafts."""
    _, ry, _ = plan["body_radii"]
    hip, head_r, cortex = plan["hip_x_mm"], plan["femoral_head_mm"], plan["cortex_mm"]
    _paint_bone(labels, p, Block((45.0, 0.62 * ry, 0.0), (55.0, 14.0, 40.0), ((0, 1), 25.0)), cortex)  # sacrum
    for side in (-1.0, 1.0):
        _paint_bone(labels, p, Block((70.0, 0.3 * ry, side * (hip - 5.0)), (50.0, 42.0, 9.0),
                                     ((1, 2), side * 35.0)), cortex)  # iliac wing
        _paint_bone(labels, p, Block((-48.0, -0.5 * ry, side * 22.0), (16.0, 12.0, 26.0)), cortex)  # pubis
        _paint_bone(labels, p, Block((-5.0, 6.0, side * (hip - 28.0)), (36.0, 30.0, 14.0)), cortex)  # acetabulum
        centre = (-5.0, 0.0, side * hip)
        labels[Block(centre, (head_r + 2.0,) * 3).inside(p)] = MUSCLE  # joint space (cartilage)
        _paint_bone(labels, p, Block((-30.0, 4.0, side * (hip + 26.0)), (34.0, 16.0, 18.0),
                                     ((0, 2), side * 40.0)), cortex)  # neck and trochanter
        _paint_bone(labels, p, Block((-140.0, 8.0, side * (hip + 32.0)), (100.0, 15.0, 15.0)),
                    plan["shaft_cortex_mm"])  # shaft: thick cortex
        _paint_bone(labels, p, Block(centre, (head_r,) * 3), cortex)  # femoral head


# --------------------------------------------------------------------------- grid and pose
def _grid(rng: np.random.Generator, half_xy: tuple[float, float], full_z: tuple[float, float],
          roi_z: tuple[float, float]) -> tuple[tuple[int, int, int], tuple[float, float, float], float]:
    """Shape, spacing and the z of the grid's centre (mm, posed anatomy about its origin).

    The in-plane field of view covers ``half_xy`` (y, x half-widths, mm); the slices cover
    ``full_z`` when the voxel cap allows, else a slab of at least ``roi_z`` (thicker slices if need
    be). The pixel's lower bound rises where even 3 mm slices over ``roi_z`` would not fit.
    """
    fov_y, fov_x = 2.0 * half_xy[0], 2.0 * half_xy[1]
    roi = roi_z[1] - roi_z[0]
    min_slices = math.ceil(roi / SLICE_MM[1]) + 1
    pixel_floor = math.sqrt(fov_y * fov_x * min_slices / MAX_VOXELS) * 1.03
    pixel = _u(rng, max(PIXEL_MM[0], pixel_floor), PIXEL_MM[1])
    thickness = _u(rng, *SLICE_MM)
    ny, nx = math.ceil(fov_y / pixel), math.ceil(fov_x / pixel)
    most = MAX_VOXELS // (ny * nx)
    nz = math.ceil((full_z[1] - full_z[0]) / thickness)
    if nz <= most:
        centre = (full_z[0] + full_z[1]) / 2.0
    else:  # a slab through the region of interest, somewhere within the anatomy
        nz = most
        thickness = max(thickness, roi / (nz - 1))
        half = nz * thickness / 2.0
        low, high = roi_z[1] - half, roi_z[0] + half
        low, high = max(low, full_z[0] + half), min(high, full_z[1] - half)
        if low > high:
            low = high = (roi_z[0] + roi_z[1]) / 2.0
        centre = _u(rng, low, high)
    return (nz, ny, nx), (round(thickness, 4), round(pixel, 4), round(pixel, 4)), centre


def _fitted(half_xy: tuple[float, float], full_z: tuple[float, float],
            spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """The shape whose field of view covers the anatomy at ``spacing`` (fewer slices past the voxel cap)."""
    ny, nx = (math.ceil(2.0 * h / s) for h, s in zip(half_xy, spacing[1:]))
    nz = math.ceil((full_z[1] - full_z[0]) / spacing[0])
    return max(8, min(nz, MAX_VOXELS // (ny * nx))), ny, nx


def _anatomy(rng: np.random.Generator, kind: str) -> tuple[
        float, dict[str, Any], list[Block], tuple[float, float], tuple[float, float]]:
    """Scale, plan, outer blocks, anatomy z range and the z range every check needs (anatomy mm)."""
    if kind == "pelvis":
        scale = _u(rng, 0.92, 1.08)
        plan = _pelvis_plan(rng)
        # Femoral heads, bladder base, prostate, rectum.
        return scale, plan, list(_pelvis_blocks(plan).values()), (-110.0, 110.0), (-55.0, 45.0)
    scale = _u(rng, 0.97, 1.03)
    plan = _head_plan(rng, child=kind == "small_head")
    outer = _head_blocks(plan)
    top = float(outer["cranium"].centre[0] + outer["cranium"].radii[0])
    blocks = [block for key, block in outer.items() if key != "neck"]
    # Neck top, eyes and sinuses, ventricles.
    return scale, plan, blocks, ((-75.0 if plan["face"] else -55.0), top + 6.0), (-50.0, 45.0)


def _coordinates(shape: Sequence[int], spacing: Sequence[float], rotation: np.ndarray, scale: float,
                 anchor: np.ndarray) -> np.ndarray:
    """(3, z, y, x) anatomy mm of the voxels: the grid centre at ``anchor``, turned and scaled."""
    axes = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, spacing)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    coords = np.tensordot((rotation.T / scale).astype(np.float32), grid, axes=(1, 0))
    coords += np.asarray(anchor, np.float32)[:, None, None, None]
    return coords.astype(np.float32, copy=False)


def _extent(blocks: Sequence[Block], rotation: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest scanner mm (z, y, x) of the blocks after the pose, about the anatomy origin."""
    lows, highs = [], []
    for block in blocks:
        axes = rotation @ block.frame().T  # the block's own axes in scanner directions
        half = scale * np.sqrt((axes ** 2) @ (block.radii.astype(np.float64) ** 2))
        centre = scale * rotation @ block.centre.astype(np.float64)
        lows.append(centre - half)
        highs.append(centre + half)
    return np.min(lows, axis=0), np.max(highs, axis=0)


# --------------------------------------------------------------------------- intensities
def _tissue_values(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-case CT HU and T1w value per label value (one constant per tissue)."""
    ct = np.zeros(len(tissues.TISSUE_NAMES), np.float32)
    mr = np.zeros(len(tissues.TISSUE_NAMES), np.float32)
    hu_table = {**CT_HU, **CT_HU_KIND[kind]}
    t1_table = {**T1W, **T1W_KIND.get(kind, {})}
    for label in range(len(tissues.TISSUE_NAMES)):
        low, high = hu_table[label]
        base = _u(rng, low, high) if high > low else low
        ct[label] = base if label in (AIR, GAS) else base * (1.0 + _u(rng, -HU_SPREAD, HU_SPREAD))
        mr[label] = MR_SCALE * t1_table[label] * (1.0 + _u(rng, -MR_SPREAD, MR_SPREAD))
    return ct, mr


def _images(rng: np.random.Generator, labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """CT (HU) and T1w MR: constants per tissue, partial volume, then noise (module docstring)."""
    ct_values, mr_values = _tissue_values(rng, kind)
    ct = gaussian_filter(ct_values[labels], BLUR_VOXELS)
    ct_noise = _u(rng, *CT_NOISE_HU)
    ct += np.float32(ct_noise) * rng.standard_normal(labels.shape, dtype=np.float32)
    mr = gaussian_filter(mr_values[labels], BLUR_VOXELS)
    mr_noise = _u(rng, *MR_NOISE) * float(mr_values[FAT])
    real = mr + np.float32(mr_noise) * rng.standard_normal(labels.shape, dtype=np.float32)
    imag = np.float32(mr_noise) * rng.standard_normal(labels.shape, dtype=np.float32)
    mr = np.sqrt(real * real + imag * imag)
    present = np.unique(labels)
    values = {"ct_noise_hu": ct_noise, "mr_noise": mr_noise,
              "ct_hu": {tissues.TISSUE_NAMES[v]: float(ct_values[v]) for v in present},
              "t1w": {tissues.TISSUE_NAMES[v]: float(mr_values[v]) for v in present}}
    return np.clip(ct, -1024.0, 3071.0).astype(np.float32), mr.astype(np.float32), values


# --------------------------------------------------------------------------- public API
def generate_case(kind: str, seed: int, shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None, name: str | None = None) -> PhantomCase:
    """One independent paired case of ``kind`` (:data:`KINDS`), deterministic in ``seed``.

    Without ``shape`` and ``spacing`` the grid is drawn per case (module docstring). With
    ``spacing`` alone the field of view is chosen for it (capped at :data:`MAX_VOXELS` by a slab);
    with ``shape`` the anatomy keeps its size in mm and a small field of view crops it.
    """
    if kind not in KINDS:
        raise DataError(f"unknown independent kind {kind!r}; choose from {', '.join(KINDS)}")
    if seed < 0:
        raise DataError(f"independent seed must be zero or positive, got {seed}")
    if shape is not None and (len(shape) != 3 or min(shape) < 8):
        raise DataError(f"independent shape must be three sizes of at least 8 voxels, got {tuple(shape)}")
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise DataError(f"independent spacing must be three positive mm values, got {tuple(spacing)}")
    started = time.perf_counter()
    rng = np.random.default_rng([seed, KINDS.index(kind), _SALT])
    angles = (_u(rng, -10, 10), _u(rng, -6, 6), _u(rng, -6, 6))
    rotation = _rotation(*angles)
    shift = rng.uniform(-6.0, 6.0, 3)
    scale, plan, blocks, full, roi = _anatomy(rng, kind)
    low, high = _extent(blocks, rotation, scale)
    half_xy = (float(max(-low[1], high[1])) + 8.0, float(max(-low[2], high[2])) + 8.0)
    full, roi = (full[0] * scale, full[1] * scale), (roi[0] * scale, roi[1] * scale)
    if spacing is None and shape is None:
        grid_shape, grid_spacing, centre_z = _grid(rng, half_xy, full, roi)
    else:
        grid_spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2])) if spacing else (2.0, 1.5, 1.5)
        grid_shape = (int(shape[0]), int(shape[1]), int(shape[2])) if shape else _fitted(half_xy, full, grid_spacing)
        centre_z = (roi[0] + roi[1]) / 2.0
    anchor = rotation.T @ (np.array([centre_z, 0.0, 0.0]) - shift) / scale
    p = _coordinates(grid_shape, grid_spacing, rotation, scale, anchor)
    labels, body = _pelvis(rng, p, plan) if kind == "pelvis" else _head(rng, p, plan)
    del p
    labels[~body] = AIR
    ct, mr, values = _images(rng, labels, kind)
    present = sorted(int(v) for v in np.unique(labels))
    origin_xyz = tuple(-(n - 1) / 2.0 * s for n, s in zip(grid_shape[::-1], grid_spacing[::-1]))
    info = {
        "family": "independent", "generator": "independent", "kind": kind, "seed": int(seed),
        "grid": {"shape": list(grid_shape), "spacing_mm": list(grid_spacing)},
        "spacing_mm": list(grid_spacing),
        "pose": {"yaw_pitch_roll_deg": list(angles), "shift_mm": [float(v) for v in shift], "scale": scale},
        "anatomy": {k: _plain(v) for k, v in plan.items()},
        "ct_noise_hu": values["ct_noise_hu"], "mr_noise": values["mr_noise"],
        "ct_hu": values["ct_hu"], "t1w": values["t1w"], "note": NOTE,
    }
    log.debug("independent %s seed %d: grid %s at %s mm in %.2f s", kind, seed, grid_shape, grid_spacing,
              time.perf_counter() - started)
    return PhantomCase(
        name=name or f"independent_{kind}_{seed}", ct=ct, mr=mr, mask=dilate(body),
        spacing=grid_spacing, origin=origin_xyz, info=info, labels=labels,  # type: ignore[arg-type]
        label_names={label: tissues.TISSUE_NAMES[label] for label in present},
    )


def _plain(value: Any) -> Any:
    """A plan value as JSON: numbers as floats, arrays and tuples as lists."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_plain(v) for v in value]
    return value
