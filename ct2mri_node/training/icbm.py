"""Paired CT/MR heads with real brain anatomy from the ICBM152 2009a templates in the nilearn wheel.

Why: the phantom and randomised families paint brains from ellipsoids; this family gives the model
real gyri, ventricles, deep grey matter and cerebellum. nilearn ships three templates of the
ICBM 2009a symmetric non-linear average (1 mm, 197 x 233 x 189): the T1w image and the grey- and
white-matter probability maps. They are read from the installed package with SimpleITK: nilearn
is never imported and nothing is downloaded.

The shipped T1 is skull-stripped (0 outside the brain: T1 >= 24 inside, 0 outside), so:

- **intracranial space**: the brain mask (T1 > 8, largest component, holes filled), smoothed
  (sigma 3 mm, > 0.3) to close the sulci, plus a random 0-2 mm of CSF per case;
- **head**: shells around it by signed distance (mm): inner table, diploe (marrow), outer table,
  scalp muscle, fat and skin, with random thicknesses that vary smoothly over the head;
- **CT**: brain HU mixed by the grey/white/CSF probabilities (CSF = 1 - grey - white inside the
  intracranial space: partial volume for free), per-label HU elsewhere, from the tables of
  :mod:`.randomised`; texture, blur and noise as there;
- **MR**: the real T1 inside the brain mask, remapped piecewise-linearly so that the template's
  CSF/grey/white medians land on this case's drawn T1w values (order kept), and the drawn T1w
  values of :mod:`.randomised` outside it; then blur, bias field, ~6% shifted slices and Rician noise.

Per case, one random transform (rotation, anisotropic scaling 0.9-1.1, shift and a smooth
deformation on a coarse displacement field) resamples all templates (linear) onto a random grid,
so the CT, the MR and the labels stay aligned.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import DataError
from . import randomised, tissues
from .metrics import gaussian_filter
from .phantoms import PhantomCase, Tissue, _dilate, random_field

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("head",)
#: Template files in ``nilearn/datasets/data`` (ICBM152 2009a, symmetric, 1 mm).
TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: The ICBM 2009a licence (the nilearn wheel ships no licence text for the templates; its
#: description ``datasets/description/icbm152_2009.rst`` says "License: unknown").
LICENCE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and "
    "its documentation for any purpose and without fee is hereby granted, provided that the above "
    "copyright notice appear in all copies. The authors and McGill University make no representations "
    "about the suitability of this software for any purpose. It is provided 'as is' without express "
    "or implied warranty."
)
CITATION = "Fonov et al. 2011, NeuroImage 54:313; Fonov et al. 2009, NeuroImage 47:S102; Collins et al. 1999"
#: T1 above this (template units 0..255) is brain: the skull-stripped T1 is 0 outside, >= 24 inside.
BRAIN_T1_THRESHOLD = 8.0
#: Closing of the brain mask into the intracranial space: Gaussian sigma (mm) and level.
INTRACRANIAL_SIGMA_MM = 3.0
INTRACRANIAL_LEVEL = 0.3
#: Grid caps (voxels): those of the randomised family. Spacing ranges (mm).
MAX_INPLANE, MAX_SLICES = randomised.MAX_INPLANE, randomised.MAX_SLICES
INPLANE_MM = (0.8, 2.5)
SLICE_MM = (1.0, 4.0)
#: Distance (mm) given to points outside the template: air.
OUTSIDE_MM = 200.0
LABEL_NAMES: dict[int, str] = {
    Tissue.AIR: tissues.AIR, randomised.SKIN: tissues.SKIN, Tissue.FAT: tissues.FAT, Tissue.MUSCLE: tissues.MUSCLE,
    Tissue.CORTICAL: tissues.CORTICAL_BONE, Tissue.TRABECULAR: tissues.MARROW,
    Tissue.GREY: tissues.GREY_MATTER, Tissue.WHITE: tissues.WHITE_MATTER, Tissue.CSF: tissues.CSF,
}
NOTE = ("synthetic CT/MR built from the ICBM152 2009a population-average templates for training and "
        "testing; not patient data")


@dataclass(frozen=True)
class Templates:
    """The loaded templates (SimpleITK images, float32) and what was derived from them."""

    t1: sitk.Image       # 0..255, skull-stripped
    gm: sitk.Image       # probability 0..1
    wm: sitk.Image       # probability 0..1
    brain: sitk.Image    # 0/1 brain mask (float32)
    dist: sitk.Image     # signed distance (mm) to the intracranial surface, positive outside
    centre: tuple[float, float, float]      # physical (x, y, z) centre of the brain's bounding box
    top_z: float                            # physical z of the top of the brain
    bottom_z: float                         # physical z of the bottom of the template
    t1_refs: tuple[float, float, float]     # template T1 medians of CSF, grey, white matter
    files: tuple[str, ...]


def template_folder() -> Path:
    """``nilearn/datasets/data`` of the installed nilearn, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the icbm family needs the ICBM152 templates of nilearn, which is not installed: "
                        "pip install 'ct2mri-node[train]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DataError(f"nilearn at {folder.parent.parent} lacks the ICBM152 template(s) {', '.join(missing)}; "
                        "reinstall it: pip install --force-reinstall 'ct2mri-node[train]'")
    return folder


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise DataError(f"cannot read ICBM template {path}: {exc}") from exc


@functools.lru_cache(maxsize=1)
def load_templates() -> Templates:
    """Read the templates and derive the brain mask and intracranial distance map (once per process)."""
    folder = template_folder()
    t1, gm, wm = (_read(folder / TEMPLATE_FILES[k]) for k in ("t1", "gm", "wm"))
    gm, wm = (img / 255.0 if sitk.GetArrayViewFromImage(img).max() > 1.5 else img for img in (gm, wm))
    brain = sitk.ConnectedComponent(t1 > BRAIN_T1_THRESHOLD)
    brain = sitk.BinaryFillhole(sitk.RelabelComponent(brain, sortByObjectSize=True) == 1)
    closed = sitk.SmoothingRecursiveGaussian(sitk.Cast(brain, sitk.sitkFloat32), INTRACRANIAL_SIGMA_MM)
    intracranial = sitk.BinaryFillhole(sitk.Or(closed > INTRACRANIAL_LEVEL, brain))
    dist = sitk.SignedMaurerDistanceMap(intracranial, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True)
    t1a, gma, wma = (sitk.GetArrayViewFromImage(img) for img in (t1, gm, wm))
    brain_a = sitk.GetArrayViewFromImage(brain) > 0
    refs = (float(np.median(t1a[brain_a & (gma + wma < 0.1)])), float(np.median(t1a[gma > 0.9])),
            float(np.median(t1a[wma > 0.9])))
    if not refs[0] < refs[1] < refs[2]:
        raise DataError(f"ICBM T1 template medians CSF/grey/white {refs} are not in T1w order; wrong files?")
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(brain)
    box = stats.GetBoundingBox(1)  # x, y, z start then sizes (index space)
    corners = [t1.TransformIndexToPhysicalPoint([int(box[i] + (box[i + 3] - 1) * f) for i in range(3)])
               for f in (0, 1)]
    centre = tuple(float((a + b) / 2) for a, b in zip(*corners))
    top_z = float(max(p[2] for p in corners))
    bottom_z = float(min(t1.TransformIndexToPhysicalPoint([0, 0, 0])[2],
                         t1.TransformIndexToPhysicalPoint([0, 0, t1.GetSize()[2] - 1])[2]))
    log.debug("ICBM templates loaded from %s; T1 refs %s", folder, refs)
    return Templates(t1=t1, gm=gm, wm=wm, brain=sitk.Cast(brain, sitk.sitkFloat32),
                     dist=sitk.Cast(dist, sitk.sitkFloat32), centre=centre, top_z=top_z,  # type: ignore[arg-type]
                     bottom_z=bottom_z, t1_refs=refs,
                     files=tuple(str(folder / TEMPLATE_FILES[k]) for k in ("t1", "gm", "wm")))


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _grid(rng: np.random.Generator, tpl: Templates, shape: Sequence[int] | None,
          spacing: Sequence[float] | None) -> tuple[tuple[int, int, int], tuple[float, float, float],
                                                    tuple[float, float, float]]:
    """Random spacing and field of view (capped matrix); returns shape, spacing (z, y, x), origin (x, y, z)."""
    inplane, between = _u(rng, *INPLANE_MM), _u(rng, *SLICE_MM)
    fov_y = _u(rng, 200.0, 250.0)
    fov = (_u(rng, 100.0, 160.0), fov_y, fov_y * _u(rng, 0.85, 1.0))
    shape, spacing = randomised.capped_grid(fov, spacing or (between, inplane, inplane), shape)
    extent = [(n - 1) * s for n, s in zip(shape, spacing)]  # z, y, x
    # Top of the field a little above the vertex; never much below the template's cut-off.
    top = tpl.top_z + _u(rng, 5.0, 25.0)
    z0 = max(top - extent[0], tpl.bottom_z + 5.0)
    origin = (tpl.centre[0] - extent[2] / 2 + _u(rng, -10, 10), tpl.centre[1] - extent[1] / 2 + _u(rng, -10, 10), z0)
    return shape, spacing, origin  # type: ignore[return-value]


def _transform(rng: np.random.Generator, tpl: Templates, shape: Sequence[int], spacing: Sequence[float],
               origin: Sequence[float]) -> tuple[sitk.Transform, dict[str, Any]]:
    """Output -> template points: a smooth deformation, then rotation and scaling about the brain centre."""
    angles = (_u(rng, -10, 10), _u(rng, -10, 10), _u(rng, -15, 15))  # about x, y, z (degrees)
    scale = tuple(_u(rng, 0.9, 1.1) for _ in range(3))  # anatomy scale along x, y, z
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*np.deg2rad(angles))
    matrix = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag(1.0 / np.asarray(scale))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tpl.centre)
    affine.SetMatrix(tuple(matrix.ravel()))
    # Smooth deformation: displacements on a coarse (~20 mm) grid over the field of view, smoothed.
    step, amplitude = 20.0, _u(rng, 1.5, 4.0)
    extent = [(n - 1) * s for n, s in zip(shape[::-1], spacing[::-1])]  # x, y, z
    coarse = [int(np.ceil(e / step)) + 5 for e in extent]
    noise = rng.standard_normal((coarse[2], coarse[1], coarse[0], 3))
    noise = gaussian_filter(noise, (1.0, 1.0, 1.0, 0.0))
    noise *= amplitude / max(float(noise.std()), 1e-6)
    field = sitk.GetImageFromArray(noise.astype(np.float64), isVector=True)
    field.SetSpacing((step, step, step))
    field.SetOrigin(tuple(o - 2 * step for o in origin))
    deformation = sitk.DisplacementFieldTransform(field)
    params = {"angles_deg_xyz": list(angles), "scale_xyz": list(scale), "deformation_mm": amplitude,
              "deformation_grid_mm": step}
    return sitk.CompositeTransform([affine, deformation]), params


def _resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, default: float) -> np.ndarray:
    out = sitk.Resample(image, reference, transform, sitk.sitkLinear, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def generate_case(
    kind: str,
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    name: str | None = None,
) -> PhantomCase:
    """One CT/MR head pair from the ICBM152 templates, deterministic in ``seed``."""
    if kind not in KINDS:
        raise DataError(f"unknown icbm kind {kind!r}; choose from {', '.join(KINDS)}")
    if seed < 0:
        raise DataError(f"seed must be zero or positive, got {seed}")
    tpl = load_templates()
    rng = np.random.default_rng([seed, 0, 0x1CB])
    shape, spacing, origin = _grid(rng, tpl, shape, spacing)
    reference = sitk.Image(shape[2], shape[1], shape[0], sitk.sitkFloat32)
    reference.SetSpacing((spacing[2], spacing[1], spacing[0]))
    reference.SetOrigin(origin)
    transform, pose = _transform(rng, tpl, shape, spacing, origin)
    t1 = _resample(tpl.t1, reference, transform, 0.0)
    gm = _resample(tpl.gm, reference, transform, 0.0)
    wm = _resample(tpl.wm, reference, transform, 0.0)
    brain = np.clip(_resample(tpl.brain, reference, transform, 0.0), 0.0, 1.0)
    dist = _resample(tpl.dist, reference, transform, OUTSIDE_MM)

    # Head shells by distance to the intracranial surface; thicknesses vary smoothly (+-20%).
    thick = {"csf": _u(rng, 0.0, 2.0), "inner_table": _u(rng, 1.0, 2.5), "diploe": _u(rng, 1.5, 5.0),
             "outer_table": _u(rng, 1.0, 2.5), "muscle": _u(rng, 0.5, 3.0), "fat": _u(rng, 1.5, 5.0),
             "skin": _u(rng, 1.0, 2.5)}
    vary = 1.0 + 0.2 * np.clip(random_field(rng, shape, spacing, 60.0), -2.0, 2.0) / 2.0
    shells = [(Tissue.CORTICAL, "inner_table"), (Tissue.TRABECULAR, "diploe"), (Tissue.CORTICAL, "outer_table"),
              (Tissue.MUSCLE, "muscle"), (Tissue.FAT, "fat"), (randomised.SKIN, "skin")]
    labels = np.zeros(shape, dtype=np.uint8)
    depth = thick["csf"] * vary
    intracranial = dist < depth
    for label, key in shells:
        outer = depth + thick[key] * vary
        labels[(dist >= depth) & (dist < outer)] = label
        depth = outer
    body = dist < depth
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    inside = np.stack([csf, gm, wm]).argmax(axis=0)
    labels[intracranial] = np.array([Tissue.CSF, Tissue.GREY, Tissue.WHITE], dtype=np.uint8)[inside[intracranial]]

    hu = randomised.draw_values(rng, randomised.CT_RANGES)
    t1w = randomised.draw_values(rng, randomised.MR_RANGES)
    ct_base = randomised._table(hu)[labels]
    ct_base[intracranial] = (csf * hu[Tissue.CSF] + gm * hu[Tissue.GREY] + wm * hu[Tissue.WHITE])[intracranial]
    ct, ct_params = randomised.ct_from_labels(rng, labels, spacing, hu, base=ct_base)

    # Real T1 inside the brain, remapped so that template CSF/grey/white land on this case's values.
    r_csf, r_gm, r_wm = tpl.t1_refs
    v_csf, v_gm, v_wm = t1w[Tissue.CSF], t1w[Tissue.GREY], t1w[Tissue.WHITE]
    top = v_wm + (255.0 - r_wm) * (v_wm - v_gm) / (r_wm - r_gm)
    brain_t1 = np.interp(np.minimum(t1 / np.maximum(brain, 1e-3), 255.0), [0.0, r_csf, r_gm, r_wm, 255.0],
                         [0.0, v_csf, v_gm, v_wm, top]).astype(np.float32)
    mr_base = brain * brain_t1 + (1.0 - brain) * randomised._table(t1w)[labels]
    mr, misaligned, mr_params = randomised.mr_from_labels(rng, labels, spacing, t1w, base=mr_base)

    present = np.bincount(labels.ravel(), minlength=256) > 0
    named = {LABEL_NAMES[k]: round(v, 4) for k, v in hu.items() if k in LABEL_NAMES and present[k]}
    named_t1 = {LABEL_NAMES[k]: round(v, 4) for k, v in t1w.items() if k in LABEL_NAMES and present[k]}
    info = {
        "family": "icbm", "kind": kind, "seed": seed, "shape": list(shape), "spacing_mm": list(spacing),
        "randomised": {"grid": "spacing and field of view (unless given)", "pose": pose,
                       "thickness_mm": {k: round(v, 2) for k, v in thick.items()},
                       "ct": ct_params, "mr": mr_params, "ct_hu": named, "t1_relative": named_t1},
        "mr_scale": randomised.MR_SCALE,
        "templates": {"files": [Path(f).name for f in tpl.files], "source": "nilearn wheel (datasets/data)",
                      "name": "ICBM152 2009a symmetric non-linear", "licence": LICENCE, "citation": CITATION,
                      "t1_refs_csf_grey_white": list(tpl.t1_refs)},
        "misaligned_slices": misaligned,
        "note": NOTE,
    }
    return PhantomCase(
        name=name or f"icbm_{kind}_{seed}", ct=ct, mr=mr, mask=_dilate(body),
        spacing=spacing, origin=origin, info=info,  # type: ignore[arg-type]
        labels=labels, label_names={int(k): v for k, v in LABEL_NAMES.items()},
    )
