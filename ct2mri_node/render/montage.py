"""PNG montages of a case: one row per volume (CT, real MR, synthetic MR), one column per plane.

Columns are the axial, coronal and sagittal planes through the volume's centre, each scaled to
square millimetres and letter-boxed into a square cell, so that the image size depends only on
the number of rows and the cell size. Pillow only (no matplotlib, no torch): the node's QA
preview (``ops/preview.py``) and the training reports (``training/evaluate.py``) both use it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError

log = logging.getLogger(__name__)

#: CT display window (centre, width) in HU: soft tissue with bone still distinguishable.
CT_WINDOW: tuple[float, float] = (40.0, 500.0)
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class Row:
    """One montage row: a volume (z, y, x), its label, and its display window (None: auto)."""

    label: str
    volume: np.ndarray
    window: tuple[float, float] | None = None


def auto_window(volume: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(centre, width) spanning the 1st to 99th percentile (inside ``mask`` when given).

    A constant volume gets a window centred on its value, so that it shows mid-grey.
    """
    values = volume[mask] if mask is not None and mask.any() else volume
    low, high = (float(v) for v in np.percentile(values, (1.0, 99.0)))
    if high > low:
        return (low + high) / 2.0, high - low
    return low, max(abs(low), 1.0)


def _to_uint8(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    centre, width = window
    scaled = (plane.astype(np.float64) - (centre - width / 2.0)) / width
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def central_planes(volume: np.ndarray, spacing: Sequence[float]) -> list[tuple[np.ndarray, float, float]]:
    """Axial, coronal, sagittal planes through the centre with (row, column) pixel sizes in mm.

    Superior is shown at the top of the coronal and sagittal planes (z grows upwards in ITK).
    """
    z, y, x = (n // 2 for n in volume.shape)
    return [
        (volume[z], spacing[1], spacing[2]),
        (volume[::-1, y, :], spacing[0], spacing[2]),
        (volume[::-1, :, x], spacing[0], spacing[1]),
    ]


def _panel(plane: np.ndarray, row_mm: float, col_mm: float, window: tuple[float, float], cell: int) -> Image.Image:
    """One plane, windowed, scaled to square mm and centred in a black ``cell`` x ``cell`` square."""
    height_mm, width_mm = plane.shape[0] * row_mm, plane.shape[1] * col_mm
    scale = cell / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    image = Image.fromarray(_to_uint8(plane, window), mode="L").resize(size, Image.Resampling.BILINEAR)
    canvas = Image.new("L", (cell, cell), 0)
    canvas.paste(image, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return canvas


def render(rows: Sequence[Row], spacing: Sequence[float], cell: int = 160, labels: bool = True) -> Image.Image:
    """The montage as a greyscale image of ``3 * cell`` by ``len(rows) * cell`` pixels."""
    if not rows:
        raise DataError("a montage needs at least one volume")
    if cell < 16:
        raise DataError(f"montage cell size must be at least 16 pixels, got {cell}")
    shape = rows[0].volume.shape
    if any(r.volume.shape != shape or r.volume.ndim != 3 for r in rows):
        raise DataError("all montage volumes must be 3D and share one shape")
    montage = Image.new("L", (len(PLANES) * cell, len(rows) * cell), 0)
    draw = ImageDraw.Draw(montage)
    for r, row in enumerate(rows):
        window = row.window or auto_window(row.volume)
        for c, (plane, row_mm, col_mm) in enumerate(central_planes(row.volume, spacing)):
            montage.paste(_panel(plane, row_mm, col_mm, window, cell), (c * cell, r * cell))
            if labels:
                draw.text((c * cell + 3, r * cell + 2), f"{row.label} {PLANES[c]}", fill=255)
    return montage


def write_case_montage(
    path: str | Path,
    ct: np.ndarray,
    mr: np.ndarray,
    synthetic: np.ndarray | None,
    spacing: Sequence[float],
    mask: np.ndarray | None = None,
    cell: int = 160,
    labels: bool = True,
) -> Path:
    """Write the CT / real MR / synthetic MR montage of one case as PNG; returns the path.

    The CT uses :data:`CT_WINDOW`; each MR is windowed on its own percentiles inside ``mask``.
    ``synthetic`` may be None for a two-row preview of a training pair.
    """
    rows = [Row("CT", ct, CT_WINDOW), Row("MR", mr, auto_window(mr, mask))]
    if synthetic is not None:
        rows.append(Row("sMR", synthetic, auto_window(synthetic, mask)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render(rows, spacing, cell, labels).save(path, format="PNG")
    log.debug("wrote montage %s", path)
    return path
