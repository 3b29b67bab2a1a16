"""Pre- and post-processing around the network (numpy and scipy only, no torch).

Pre-processing: CT HU are clipped to the range of the card's CT windows and resampled in index
space to the model spacing, axis by axis,
one output slice at a time (an int16 CT is made float32 only slice by slice), from the CT
spacing to the model spacing (orientation and origin are untouched, only the
sample count per axis changes; voxel centres are aligned at the half-voxel convention); then
each window (level, width) becomes one input channel in [-1, 1] (:class:`IntensityMapping`).

Post-processing (after Ma, Chen & Liang 2026: "global normalisation + automatic contrast
enhancement"):

1. body mask from the CT: HU > -500, largest connected component, holes filled;
2. global normalisation: the 1st/99th percentiles of the synthetic MR inside the body map to
   0 and 1 (clipped), so volumes are comparable across patients whatever the model's scale;
3. automatic contrast enhancement: contrast-limited histogram equalisation inside the body
   (histogram clipped at 3x its mean bin, CLAHE-style, cumulative histogram as the mapping),
   blended 50/50 with the normalised image so global contrast relations are kept; done on
   the model grid. SimpleITK's AdaptiveHistogramEqualizationImageFilter was measured at
   ~35 s on a 107x128x128 grid (2 cores), far over budget, so it is not used;
4. zero outside the body, map [0, 1] -> 0..4095 (12 bits) and suggest a display window
   spanning the 1st..99th percentiles inside the body.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError

log = logging.getLogger(__name__)

MAX_12BIT = 4095
BODY_THRESHOLD_HU = -500.0


#: How the v0.2 models' training normalised the MR (``intensity["mr"]["method"]`` of their cards).
MR_PERCENTILE = "per case, 1st/99th percentile inside the body mask -> [-1, 1], clipped"
#: How training normalises the MR now: anchored on fat, a tissue whose T1w signal is stable.
MR_FAT_ANCHOR = ("fat-anchored: the median MR over interior fat voxels (CT -150..-50 HU, eroded, in the body) "
                 "maps to +0.6, zero signal to -1, clipped to [-1, 1]; 99th percentile as the anchor where "
                 "there are fewer than 500 such voxels")
MR_METHODS: dict[str, str] = {"fat": MR_FAT_ANCHOR, "percentile": MR_PERCENTILE}

#: CT windows (level, width) in HU that the network sees as input channels, each mapped to [-1, 1]:
#: brain (L40/W80), soft tissue (L40/W400), bone (L400/W1800) and the full range -1024..2000.
#: One linear window gives soft tissues 0.01-0.03 input units apart, about the CT noise; the
#: brain and soft-tissue windows spread them over the input range (as radiology networks do).
DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 80.0), (40.0, 400.0), (400.0, 1800.0), (488.0, 3024.0))
FAT_HU = (-150.0, -50.0)
FAT_ANCHOR_VALUE = 0.6
MIN_FAT_VOXELS = 500


@dataclass(frozen=True)
class IntensityMapping:
    """CT HU -> network input channels: one per window (level, width), each clipped and mapped
    linearly to [-1, 1] (stored in the checkpoint card). A single window is the v0.2 mapping."""

    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS

    @classmethod
    def linear(cls, hu_min: float = -1024.0, hu_max: float = 2000.0) -> IntensityMapping:
        """One window mapping ``hu_min``..``hu_max`` to [-1, 1] (the v0.2 cards' mapping)."""
        return cls((((hu_min + hu_max) / 2.0, hu_max - hu_min),))

    @classmethod
    def from_card(cls, intensity: Mapping[str, Any]) -> IntensityMapping:
        """The CT mapping of a card's ``intensity`` section: ``windows``, or a v0.2 card's
        ``hu_min``/``hu_max`` (one window)."""
        ct = intensity.get("ct", {})
        if "windows" in ct:
            windows = tuple((float(w["level"]), float(w["width"])) for w in ct["windows"])
            if not windows or min(w for _, w in windows) <= 0:
                raise InputError(f"the card's CT windows {ct['windows']} need at least one window of positive width")
            return cls(windows)
        return cls.linear(float(ct.get("hu_min", -1024.0)), float(ct.get("hu_max", 2000.0)))

    @property
    def channels(self) -> int:
        """Number of input channels the CT becomes."""
        return len(self.windows)

    @property
    def hu_range(self) -> tuple[float, float]:
        """The HU range every window lies in (values outside change no channel)."""
        return (min(level - width / 2.0 for level, width in self.windows),
                max(level + width / 2.0 for level, width in self.windows))

    def to_card(self, mr_method: str = "fat") -> dict[str, Any]:
        """The card's ``intensity`` section for this mapping and the MR normalisation ``mr_method``."""
        return {
            "ct": {"windows": [{"level": float(level), "width": float(width)} for level, width in self.windows],
                   "maps_to": [-1.0, 1.0], "method": "per window: clip to level +- width/2, then linear"},
            "mr": {"name": mr_method, "method": MR_METHODS[mr_method]},
        }

    def clip(self, hu: np.ndarray) -> np.ndarray:
        """HU clipped to :attr:`hu_range` as float32 (the value resampled to the model grid)."""
        low, high = self.hu_range
        return np.clip(np.asarray(hu, dtype=np.float32), low, high)

    def encode(self, hu: np.ndarray) -> np.ndarray:
        """HU (any shape) -> (channels, *shape) float32 in [-1, 1], one channel per window."""
        hu = np.asarray(hu, dtype=np.float32)
        out = np.empty((self.channels, *hu.shape), dtype=np.float32)
        for c, (level, width) in enumerate(self.windows):
            np.clip((hu - (level - width / 2.0)) * np.float32(2.0 / width) - np.float32(1.0), -1.0, 1.0, out=out[c])
        return out


def fat_anchor(mr: np.ndarray, ct_hu: np.ndarray, mask: np.ndarray) -> float:
    """The MR signal of fat: median MR over interior fat voxels (CT in :data:`FAT_HU`, all six
    neighbours too, inside ``mask``); the 99th percentile inside ``mask`` where there are fewer
    than :data:`MIN_FAT_VOXELS` of them. Fat is bright and stable on T1w, so anchoring on it keeps
    every tissue at a case-independent target value, which a patch can predict locally (a
    percentile of the whole case cannot be seen from one patch)."""
    fat = (ct_hu >= FAT_HU[0]) & (ct_hu <= FAT_HU[1]) & mask
    interior = fat.copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(fat, step, axis=axis)
    if int(interior.sum()) >= MIN_FAT_VOXELS:
        return float(np.median(mr[interior]))
    inside = mr[mask] if mask.any() else mr.ravel()
    return float(np.percentile(inside, 99.0))


def mr_target_map(mr: np.ndarray, ct_hu: np.ndarray, mask: np.ndarray, method: str = "fat") -> tuple[float, float]:
    """(scale, offset) of the training target: both methods are one linear map per case, clipped
    to [-1, 1], so a patch can be normalised without the whole case (``training/grid_cache.py``)."""
    if method == "percentile":
        lo, hi = robust_range(mr, mask)
        return 2.0 / (hi - lo), -2.0 * lo / (hi - lo) - 1.0
    if method != "fat":
        raise InputError(f"unknown MR normalisation {method!r}; choose one of {', '.join(MR_METHODS)}")
    anchor = fat_anchor(mr, ct_hu, mask)
    if anchor <= 0:
        raise InputError("the MR has no positive signal in the body; cannot anchor it on fat")
    return (FAT_ANCHOR_VALUE + 1.0) / anchor, -1.0


def normalise_mr(mr: np.ndarray, ct_hu: np.ndarray, mask: np.ndarray, method: str = "fat") -> np.ndarray:
    """The training target: MR on the model grid -> [-1, 1] float32 by ``method`` (:data:`MR_METHODS`)."""
    if method == "percentile":
        return (normalise_global(mr, mask) * 2.0 - 1.0).astype(np.float32)
    scale, offset = mr_target_map(mr, ct_hu, mask, method)
    scaled = mr.astype(np.float32) * np.float32(scale) + np.float32(offset)
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def model_shape(shape: tuple[int, ...], spacing: tuple[float, ...], model_spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Samples per axis on the model grid covering the same extent (at least 1)."""
    return tuple(max(1, int(round(n * s / m))) for n, s, m in zip(shape, spacing, model_spacing))


def _axis_weights(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from ``n`` to ``size`` samples: lower and upper source index, weight."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5
    pos = np.clip(pos, 0.0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def _resample_axis(arr: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear interpolation along one axis to ``size`` samples (half-voxel centre alignment)."""
    n = arr.shape[axis]
    if n == size:
        return arr
    lo, hi, w = _axis_weights(n, size)
    shape = [1] * arr.ndim
    shape[axis] = size
    w = w.reshape(shape)
    return np.take(arr, lo, axis=axis) * (1 - w) + np.take(arr, hi, axis=axis) * w


def _as_float32(plane: np.ndarray) -> np.ndarray:
    return np.asarray(plane, dtype=np.float32)


def resample(arr: np.ndarray, shape: tuple[int, ...],
             prepare: Callable[[np.ndarray], np.ndarray] = _as_float32) -> np.ndarray:
    """Resample a 3D array to ``shape`` in index space (float32), one output slice at a time.

    ``prepare`` turns one input slice into float32 (default: a plain conversion; the translator
    passes the HU mapping), so an int16 CT or a bool mask is never copied whole to float32: only
    the output and two prepared input slices are held. The values are those of resampling the
    prepared volume along axis 0, then 1, then 2 (the same float32 operations per voxel).
    """
    if arr.ndim != 3 or len(shape) != 3:
        raise InputError(f"resample needs a 3D array and a 3D shape, got {arr.shape} -> {shape}")
    size = int(shape[0])
    out = np.empty((size, int(shape[1]), int(shape[2])), dtype=np.float32)
    # Input slices prepared on demand; the indices only rise, so the last two are all that is reused.
    plane: Callable[[int], np.ndarray] = functools.lru_cache(maxsize=2)(lambda i: prepare(arr[i]))
    if arr.shape[0] == size:
        for z in range(size):
            out[z] = _resample_plane(plane(z), out.shape[1:])
        return out
    lo, hi, w = _axis_weights(arr.shape[0], size)
    for z in range(size):
        mixed = plane(int(lo[z])) * (1 - w[z]) + plane(int(hi[z])) * w[z]
        out[z] = _resample_plane(mixed, out.shape[1:])
    return out


def to_model_grid(ct_hu: np.ndarray, mask: np.ndarray, grid: tuple[int, ...],
                  mapping: IntensityMapping) -> tuple[np.ndarray, np.ndarray]:
    """The CT in HU (clipped to the mapping's range) and the body mask, resampled to ``grid``.

    One place for what inference (the translator) and training (``prepare_case``) feed the
    network, so both see the same input (``mapping.encode`` makes the channels); slice by slice,
    without whole-volume float32 copies of the CT.
    """
    return resample(ct_hu, grid, prepare=mapping.clip), resample(mask, grid) > 0.5


def _resample_plane(plane: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resample one float32 slice along its rows, then its columns."""
    for axis, size in enumerate(shape):
        plane = _resample_axis(plane, axis, int(size))
    return plane


def check_ct(ct_hu: np.ndarray, min_size: int = 2) -> None:
    """Raise InputError for what cannot be translated: wrong rank, tiny, non-finite."""
    if ct_hu.ndim != 3:
        raise InputError(f"the CT must be a 3D array (slice, row, column); got {ct_hu.ndim} dimensions")
    if min(ct_hu.shape) < min_size:
        raise InputError(f"the CT volume {ct_hu.shape} is too small: every axis needs at least {min_size} voxels")
    if ct_hu.dtype.kind == "f" and not np.isfinite(ct_hu).all():
        raise InputError("the CT volume contains non-finite values (NaN or infinity); check the rescale attributes")


def body_mask(ct_hu: np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Body mask: HU above ``threshold``, largest 6-connected component, holes filled (bool)."""
    labels, count = ndimage.label(ct_hu > threshold)
    if count == 0:
        return np.zeros(ct_hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(ndimage.binary_fill_holes(labels == int(np.argmax(sizes))), dtype=bool)


def robust_range(values: np.ndarray, mask: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The ``low``/``high`` percentiles inside ``mask`` (whole volume if the mask is empty)."""
    inside = values[mask] if mask.any() else values.ravel()
    lo, hi = np.percentile(inside, [low, high])
    return float(lo), float(hi) if hi > lo else float(lo) + 1e-6


def normalise_global(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Map the 1st/99th percentiles inside the mask to 0/1, clipped (float32)."""
    lo, hi = robust_range(values, mask)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def enhance_contrast(values: np.ndarray, mask: np.ndarray, bins: int = 256, clip: float = 3.0,
                     blend: float = 0.5) -> np.ndarray:
    """Contrast-limited histogram equalisation of a [0, 1] volume inside ``mask`` (float32).

    The histogram of the body voxels is clipped at ``clip`` times its mean bin count (the
    excess spread evenly, as in CLAHE, so no intensity range is stretched without limit), its
    cumulative sum is the intensity mapping, and the result is blended ``blend``/``1 - blend``
    with the input so that global contrast relations survive. O(voxels): ~0.1 s for 2 M voxels,
    where SimpleITK's adaptive (local) equalisation took ~35 s on the same grid.
    """
    edges, cdf = _clipped_cdf(values, mask, bins, clip)
    equalised = np.interp(values, edges, cdf).astype(np.float32)
    return np.clip(blend * equalised + (1.0 - blend) * values, 0.0, 1.0).astype(np.float32)


def _clipped_cdf(values: np.ndarray, mask: np.ndarray, bins: int, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """The intensity mapping of :func:`enhance_contrast`: histogram bin edges and the normalised
    cumulative sum of the clipped histogram of ``values`` inside ``mask``."""
    inside = values[mask] if mask.any() else values.ravel()
    hist, edges = np.histogram(inside, bins=bins, range=(0.0, 1.0))
    limit = clip * max(hist.mean(), 1.0)
    excess = np.maximum(hist - limit, 0.0).sum()
    clipped = np.minimum(hist, limit) + excess / bins
    cdf = np.concatenate([[0.0], np.cumsum(clipped)])
    return edges, cdf / cdf[-1]


def to_uint12(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float, float]:
    """[0, 1] -> uint16 0..4095, zero outside ``mask``; plus a window (center, width)."""
    out = np.rint(np.clip(values, 0.0, 1.0) * MAX_12BIT).astype(np.uint16)
    out[~mask] = 0
    lo, hi = robust_range(out, mask)  # percentiles of uint16 equal those of its float32 copy
    lo, hi = max(lo, 0.0), min(hi, float(MAX_12BIT))
    width = max(hi - lo, 1.0)
    return out, (lo + hi) / 2.0, width


def postprocess_model_grid(mr: np.ndarray, mask: np.ndarray, enhance: bool = True) -> np.ndarray:
    """Global normalisation and contrast enhancement on the model grid -> [0, 1] float32."""
    normalised = normalise_global(mr, mask)
    return enhance_contrast(normalised, mask) if enhance else normalised


@dataclass(frozen=True)
class PostMapping:
    """The post-processing of one result as a fixed intensity mapping, fitted on the mean sample.

    :func:`postprocess_model_grid` fits its mapping (the percentiles of the global
    normalisation, the clipped histogram of the contrast enhancement) on the volume it maps.
    The uncertainty map needs every sample through the *same* mapping as the mean that became
    the MR, so the standard deviation across samples is in the MR's own units: ``fit`` on the
    mean, then call on each sample. ``fit(x, m)(x)`` equals ``postprocess_model_grid(x, m)``.
    """

    low: float
    high: float
    edges: np.ndarray
    cdf: np.ndarray
    blend: float = 0.5

    @classmethod
    def fit(cls, mr: np.ndarray, mask: np.ndarray, bins: int = 256, clip: float = 3.0,
            blend: float = 0.5) -> PostMapping:
        """The mapping :func:`postprocess_model_grid` applies to ``mr`` (same arithmetic)."""
        low, high = robust_range(mr, mask)
        values = np.clip((mr - low) / (high - low), 0.0, 1.0).astype(np.float32)
        edges, cdf = _clipped_cdf(values, mask, bins, clip)
        return cls(low, high, edges, cdf, blend)

    def __call__(self, mr: np.ndarray) -> np.ndarray:
        """``mr`` through the fitted normalisation and contrast enhancement -> [0, 1] float32."""
        values = np.clip((mr - self.low) / (self.high - self.low), 0.0, 1.0).astype(np.float32)
        equalised = np.interp(values, self.edges, self.cdf).astype(np.float32)
        return np.clip(self.blend * equalised + (1.0 - self.blend) * values, 0.0, 1.0).astype(np.float32)
