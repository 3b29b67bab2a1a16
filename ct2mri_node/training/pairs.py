"""Paired CT/MR cases in the SynthRAD2023 Task 1 layout: ``<root>/<case>/{ct,mr,mask}.<ext>``.

Each case folder holds three images on one grid: the CT in HU, the MR in arbitrary units and a
body mask. ``<ext>`` is ``.nii.gz``, ``.nii`` or ``.mha`` (what SimpleITK reads). Arrays are
indexed ``(z, y, x)`` as numpy sees an ITK image; ``spacing`` follows that order, while
``origin`` and ``direction`` keep ITK's ``(x, y, z)`` order so that they can be written back
unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

from ..errors import DataError

log = logging.getLogger(__name__)

#: The three images of a case, by the stem SynthRAD uses.
IMAGE_STEMS: tuple[str, ...] = ("ct", "mr", "mask")
#: File extensions tried, in this order, for each image.
EXTENSIONS: tuple[str, ...] = (".nii.gz", ".mha", ".nii")
#: Relative tolerance when comparing the grids (spacing, origin, direction) of a case's images.
GRID_TOLERANCE = 1e-3


@dataclass
class PairedCase:
    """One paired case: CT and MR on the same grid, with the body mask."""

    name: str
    ct: np.ndarray                       # float32 (z, y, x), HU
    mr: np.ndarray                       # float32 (z, y, x), arbitrary units
    mask: np.ndarray                     # bool (z, y, x)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # ITK order (x, y, z) mm
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # ITK, row-major 3x3

    def __post_init__(self) -> None:
        if self.ct.ndim != 3:
            raise DataError(f"case {self.name}: CT must be a 3D array, got shape {self.ct.shape}")
        if self.mr.shape != self.ct.shape or self.mask.shape != self.ct.shape:
            raise DataError(
                f"case {self.name}: CT {self.ct.shape}, MR {self.mr.shape} and mask "
                f"{self.mask.shape} must have the same shape"
            )
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise DataError(f"case {self.name}: spacing must be three positive numbers, got {self.spacing}")
        if len(self.direction) != 9:
            raise DataError(f"case {self.name}: direction must have 9 values, got {len(self.direction)}")


def _find_image(case_dir: Path, stem: str) -> Path | None:
    """The first existing ``<stem><ext>`` in ``case_dir``, or None."""
    for ext in EXTENSIONS:
        path = case_dir / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def _case_files(case_dir: Path) -> dict[str, Path]:
    """The three image files of a case; DataError naming what is missing."""
    found = {stem: _find_image(case_dir, stem) for stem in IMAGE_STEMS}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"case folder {case_dir} is incomplete: no {', '.join(missing)} image "
            f"(expected {' + '.join(IMAGE_STEMS)} as one of {', '.join(EXTENSIONS)})"
        )
    return {stem: path for stem, path in found.items() if path is not None}


def _grid(image: sitk.Image | sitk.ImageFileReader) -> tuple[tuple[int, ...], np.ndarray]:
    """Size and the stacked (spacing, origin, direction) of an image or a reader's header."""
    size = tuple(int(v) for v in image.GetSize())
    geometry = np.concatenate(
        [np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin()), np.asarray(image.GetDirection())]
    )
    return size, geometry


def _check_same_grid(case_dir: Path, grids: dict[str, tuple[tuple[int, ...], np.ndarray]]) -> None:
    """DataError unless every image of a case has the CT's size, spacing, origin and direction."""
    ct_size, ct_geometry = grids["ct"]
    for stem, (size, geometry) in grids.items():
        if size != ct_size:
            raise DataError(
                f"case {case_dir.name}: {stem} has size {size} but ct has {ct_size}; "
                "resample all three images of a case onto the CT grid"
            )
        scale = np.maximum(np.abs(ct_geometry), 1.0)
        if np.any(np.abs(geometry - ct_geometry) > GRID_TOLERANCE * scale):
            raise DataError(
                f"case {case_dir.name}: {stem} is not on the CT grid (spacing, origin or direction "
                "differ); resample all three images of a case onto the CT grid"
            )


def _read_header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Size and geometry of an image file without reading its pixels."""
    import SimpleITK as sitk  # here: generating cases in memory (a GPU host) needs no SimpleITK

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"cannot read image header of {path}: {exc}") from exc
    if reader.GetDimension() != 3:
        raise DataError(f"{path} is {reader.GetDimension()}D; a case image must be 3D")
    return _grid(reader)


def list_cases(root: str | Path) -> list[Path]:
    """Every case folder under ``root``, sorted by name, after checking files and grids.

    Folders holding none of the three images (SynthRAD's ``overview``) are skipped; a folder
    with some but not all of them, or with images on different grids, is a DataError.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    cases: list[Path] = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if all(_find_image(case_dir, stem) is None for stem in IMAGE_STEMS):
            continue
        files = _case_files(case_dir)
        _check_same_grid(case_dir, {stem: _read_header(path) for stem, path in files.items()})
        cases.append(case_dir)
    if not cases:
        raise DataError(
            f"no cases in {root}: expected sub-folders each holding ct, mr and mask images "
            f"({', '.join(EXTENSIONS)}); generate some with `ct2mri-node phantoms --out {root}`"
        )
    log.debug("found %d cases in %s", len(cases), root)
    return cases


def _read_image(path: Path) -> sitk.Image:
    import SimpleITK as sitk  # here: generating cases in memory (a GPU host) needs no SimpleITK

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path} must be a 3D single-channel image")
    return image


def load_case(case_dir: str | Path) -> PairedCase:
    """Read one case folder into a :class:`PairedCase` (CT and MR as float32, mask as bool)."""
    import SimpleITK as sitk  # here: generating cases in memory (a GPU host) needs no SimpleITK

    case_dir = Path(case_dir)
    files = _case_files(case_dir)
    images = {stem: _read_image(path) for stem, path in files.items()}
    _check_same_grid(case_dir, {stem: _grid(image) for stem, image in images.items()})
    ct = images["ct"]
    spacing_xyz = ct.GetSpacing()
    return PairedCase(
        name=case_dir.name,
        ct=sitk.GetArrayFromImage(ct).astype(np.float32, copy=False),
        mr=sitk.GetArrayFromImage(images["mr"]).astype(np.float32, copy=False),
        mask=sitk.GetArrayFromImage(images["mask"]) > 0,
        spacing=(float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0])),
        origin=tuple(float(v) for v in ct.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in ct.GetDirection()),
    )


def _to_image(array: np.ndarray, case: PairedCase) -> sitk.Image:
    import SimpleITK as sitk  # here: generating cases in memory (a GPU host) needs no SimpleITK

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((case.spacing[2], case.spacing[1], case.spacing[0]))
    image.SetOrigin(case.origin)
    image.SetDirection(case.direction)
    return image


def write_case(case_dir: str | Path, case: PairedCase) -> Path:
    """Write a case as ``ct.nii.gz`` (int16 HU), ``mr.nii.gz`` (float32) and ``mask.nii.gz`` (uint8).

    The CT is rounded to int16 as SynthRAD stores it; the MR stays float32 so that no
    precision is lost. Returns the case folder.
    """
    import SimpleITK as sitk  # here: generating cases in memory (a GPU host) needs no SimpleITK

    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    ct = np.clip(np.rint(case.ct), -32768, 32767).astype(np.int16)
    arrays = {
        "ct": ct,
        "mr": case.mr.astype(np.float32, copy=False),
        "mask": case.mask.astype(np.uint8),
    }
    for stem, array in arrays.items():
        sitk.WriteImage(_to_image(array, case), str(case_dir / f"{stem}.nii.gz"), useCompression=True)
    log.debug("wrote case %s to %s", case.name, case_dir)
    return case_dir


#: Optional label map of a case (uint8, on the CT grid) and the tissue names of its labels.
LABELS_IMAGE = "labels.nii.gz"
LABELS_NAMES = "labels.json"


def write_labels(case_dir: str | Path, case: PairedCase, labels: np.ndarray, names: dict[int, str]) -> None:
    """Write a case's tissue label map and its label -> tissue-name table (names from ``tissues``).

    Used by the tissue-order score; a case without labels is still a valid case.
    """
    import SimpleITK as sitk  # here: generating cases in memory (a GPU host) needs no SimpleITK

    from .tissues import TISSUE_NAMES

    case_dir = Path(case_dir)
    if labels.shape != case.ct.shape:
        raise DataError(f"case {case.name}: labels {labels.shape} must have the CT's shape {case.ct.shape}")
    unknown = sorted(set(names.values()) - set(TISSUE_NAMES))
    if unknown:
        raise DataError(f"case {case.name}: unknown tissue names {unknown}; use those of training.tissues")
    sitk.WriteImage(_to_image(labels.astype(np.uint8), case), str(case_dir / LABELS_IMAGE), useCompression=True)
    (case_dir / LABELS_NAMES).write_text(json.dumps({str(k): v for k, v in sorted(names.items())}, indent=2) + "\n")


def load_labels(case_dir: str | Path) -> tuple[np.ndarray, dict[int, str]] | None:
    """A case's label map and names, or None when the case has none."""
    import SimpleITK as sitk  # here: generating cases in memory (a GPU host) needs no SimpleITK

    case_dir = Path(case_dir)
    image_path, names_path = case_dir / LABELS_IMAGE, case_dir / LABELS_NAMES
    if not image_path.is_file() or not names_path.is_file():
        return None
    try:
        names = {int(k): str(v) for k, v in json.loads(names_path.read_text()).items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{names_path}: cannot read the label names ({exc})") from exc
    labels = sitk.GetArrayFromImage(_read_image(image_path)).astype(np.uint8)
    return labels, names
