"""Image-similarity metrics after the SynthRAD2023 definitions, computed inside a body mask.

The real MR is the reference. Synthetic and real MR come in arbitrary units, so before any
metric both volumes are normalised by the same robust rule, each by its own statistics:
``v = clip((x - p1) / (p99 - p1), 0, 1)`` with ``p1``/``p99`` the 1st/99th percentiles of that
volume inside the mask. On that scale:

- **MAE** is the mean absolute difference over the mask voxels;
- **PSNR** is ``10 log10(R^2 / MSE)`` over the mask voxels, with ``R`` the reference's range
  inside the mask (1 after normalisation), capped at :data:`PSNR_CAP_DB` for identical inputs;
- **SSIM** is the 3D SSIM of Wang et al. with a Gaussian window (sigma 1.5 voxels, truncated at
  3.5 sigma, K1 = 0.01, K2 = 0.03, population covariances: skimage's ``gaussian_weights=True``),
  computed over the whole volume with voxels outside the mask set to 0 in both, then averaged
  over the mask voxels at least :data:`SSIM_BORDER` voxels from the volume's edge (SynthRAD's
  masked mean).

numpy only, so that evaluation runs without torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

#: PSNR reported for identical volumes (an infinite value cannot be written to JSON).
PSNR_CAP_DB = 100.0
#: Voxels at the volume's edge left out of the SSIM mean, as in SynthRAD's evaluation.
SSIM_BORDER = 3
#: Percentiles of the robust normalisation.
NORMALISE_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class Metrics:
    """Masked similarity of a synthetic MR to the real one (normalised intensities)."""

    mae: float
    psnr: float
    ssim: float


def _check_pair(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask as bool; DataError unless shapes agree and the mask is not empty."""
    if reference.shape != prediction.shape or reference.shape != mask.shape:
        raise DataError(
            f"reference {reference.shape}, prediction {prediction.shape} and mask {mask.shape} "
            "must have the same shape"
        )
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise DataError("the mask is empty: metrics are computed inside the body mask")
    return mask


def normalise(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Map a volume to [0, 1] by its own 1st/99th percentile inside ``mask``, clipped (float64).

    A volume that is constant inside the mask maps to all zeros (and is logged), so that a
    degenerate prediction scores badly instead of stopping an evaluation.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise DataError("the mask is empty: cannot normalise intensities inside it")
    low, high = np.percentile(volume[mask], NORMALISE_PERCENTILES)
    if not high > low:
        log.warning("volume is constant inside the mask; normalised to zeros")
        return np.zeros(volume.shape, dtype=np.float64)
    return np.clip((volume.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def masked_mae(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference over the mask voxels."""
    mask = _check_pair(reference, prediction, mask)
    diff = reference[mask].astype(np.float64) - prediction[mask].astype(np.float64)
    return float(np.mean(np.abs(diff)))


def masked_psnr(
    reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray, data_range: float | None = None
) -> float:
    """PSNR in dB over the mask voxels; ``data_range`` defaults to the reference's range there."""
    mask = _check_pair(reference, prediction, mask)
    ref = reference[mask].astype(np.float64)
    if data_range is None:
        data_range = float(ref.max() - ref.min())
    if data_range <= 0:
        raise DataError("the reference is constant inside the mask: PSNR is undefined")
    mse = float(np.mean((ref - prediction[mask].astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(data_range**2 / mse))


def gaussian_kernel(sigma: float, truncate: float = 3.5) -> np.ndarray:
    """Normalised 1D Gaussian weights of radius ``int(truncate * sigma + 0.5)`` (as scipy)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def gaussian_filter(
    volume: np.ndarray, sigma: float | Sequence[float], truncate: float = 3.5
) -> np.ndarray:
    """Separable Gaussian smoothing with mirrored edges (scipy.ndimage ``mode='reflect'``).

    ``sigma`` is in voxels, one value or one per axis; an axis with sigma 0 is left alone.
    Returns float64 for float64 input, float32 otherwise.
    """
    dtype = np.float64 if volume.dtype == np.float64 else np.float32
    out = np.asarray(volume, dtype=dtype)
    if isinstance(sigma, (int, float)):
        sigmas = [float(sigma)] * out.ndim
    else:
        sigmas = [float(s) for s in sigma]
    if len(sigmas) != out.ndim:
        raise ValueError(f"need {out.ndim} sigmas, got {len(sigmas)}")
    for axis, s in enumerate(sigmas):
        if s > 0:
            out = _filter_axis(out, gaussian_kernel(s, truncate).astype(dtype), axis)
    return out


def _filter_axis(volume: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Correlate ``volume`` with symmetric ``weights`` along one axis (mirrored padding)."""
    radius = len(weights) // 2
    pad = [(0, 0)] * volume.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(volume, pad, mode="symmetric")
    # A kernel wider than the axis needs repeated mirroring; np.pad "symmetric" handles it.
    length = volume.shape[axis]
    out = np.zeros_like(volume)
    window: list[slice] = [slice(None)] * volume.ndim
    for k, w in enumerate(weights):
        window[axis] = slice(k, k + length)
        out += w * padded[tuple(window)]  # a view: no copy of the padded volume per tap
    return out


def ssim_map(
    reference: np.ndarray, prediction: np.ndarray, data_range: float, sigma: float = 1.5
) -> np.ndarray:
    """Voxel-wise SSIM with a Gaussian window (skimage ``gaussian_weights=True``)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    x = reference.astype(np.float64)
    y = prediction.astype(np.float64)
    mu_x, mu_y = gaussian_filter(x, sigma), gaussian_filter(y, sigma)
    var_x = gaussian_filter(x * x, sigma) - mu_x * mu_x
    var_y = gaussian_filter(y * y, sigma) - mu_y * mu_y
    cov = gaussian_filter(x * y, sigma) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def masked_ssim(
    reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray, data_range: float | None = None
) -> float:
    """SSIM averaged over the mask (outside set to 0 first, edge voxels left out as SynthRAD)."""
    mask = _check_pair(reference, prediction, mask)
    if data_range is None:
        ref = reference[mask]
        data_range = float(ref.max() - ref.min())
    if data_range <= 0:
        raise DataError("the reference is constant inside the mask: SSIM is undefined")
    values = ssim_map(np.where(mask, reference, 0.0), np.where(mask, prediction, 0.0), data_range)
    inner = _crop(mask, SSIM_BORDER)
    if inner.any():
        return float(_crop(values, SSIM_BORDER)[inner].mean())
    return float(values[mask].mean())


def _crop(volume: np.ndarray, border: int) -> np.ndarray:
    """The volume without ``border`` voxels on each side of every axis (empty if too small)."""
    return volume[tuple(slice(border, max(border, n - border)) for n in volume.shape)]


def compare(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> Metrics:
    """Normalise both volumes (module docstring) and compute masked MAE, PSNR and SSIM."""
    mask = _check_pair(reference, prediction, mask)
    ref = normalise(reference, mask)
    pred = normalise(prediction, mask)
    data_range = float(ref[mask].max() - ref[mask].min())
    if data_range <= 0:
        raise DataError("the real MR is constant inside the mask: metrics are undefined")
    return Metrics(
        mae=masked_mae(ref, pred, mask),
        psnr=masked_psnr(ref, pred, mask, data_range),
        ssim=masked_ssim(ref, pred, mask, data_range),
    )


# --------------------------------------------------------------------------------------- texture
#: Radial frequency bins of :func:`spectrum_distance` between 0 and 0.5 cycles per voxel.
SPECTRUM_BINS = 16
#: An axial slice counts in :func:`spectrum_distance` when the body fills at least this share of the
#: body's in-plane bounding box there (the body's tips are mostly edge, not texture).
SPECTRUM_MIN_BODY_FRACTION = 0.25
#: Quantiles compared by :func:`gradient_distance` (the 1D Wasserstein distance on a grid of them).
GRADIENT_QUANTILES = np.linspace(0.005, 0.995, 199)


@dataclass(frozen=True)
class Texture:
    """How far a synthetic MR's texture is from the real one's (0: the same; lower is closer)."""

    #: Mean |difference| in decades of the log radially averaged power spectra (per axial slice,
    #: normalised to unit total power, averaged over slices): :func:`spectrum_distance`.
    spectrum: float
    #: 1D Wasserstein distance between the gradient-magnitude distributions inside the body
    #: (normalised intensity per voxel): :func:`gradient_distance`.
    gradient: float


def radial_spectrum(volume: np.ndarray, mask: np.ndarray, bins: int = SPECTRUM_BINS) -> np.ndarray:
    """log10 of the radially averaged power spectrum of ``volume``'s axial slices, inside the mask's
    in-plane bounding box, each normalised to unit total power, averaged over slices; ``bins`` values
    (fewer for a box under ``2 * bins`` voxels on a side: half its shorter side).

    Per slice (axis 0) with enough body (:data:`SPECTRUM_MIN_BODY_FRACTION`): voxels outside the
    mask take the slice's mean inside it (so the background adds no texture), the mean is removed,
    a 2D Hann window tapers the box's edges, and the power ``|FFT|^2`` is averaged over rings of
    radial frequency ``(0, 0.5]`` cycles/voxel (DC left out; corners beyond 0.5 too). Why: a blur
    takes power from the high rings, noise adds it; normalising each slice leaves the shape only.
    """
    mask = np.asarray(mask, dtype=bool)
    if volume.shape != mask.shape or volume.ndim != 3:
        raise DataError(f"volume {volume.shape} and mask {mask.shape} must be the same 3D shape")
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size < 4 or cols.size < 4:
        raise DataError("the body is too small in-plane (under 4x4 voxels) for a texture spectrum")
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
    # Rings no narrower than the coarser axis's frequency step, so that none is empty.
    bins = min(bins, min(height, width) // 2)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    # Ring k holds radii in (k, k + 1] * 0.5 / bins; index ``bins`` collects what is left out: the
    # DC term and the corners beyond 0.5 (the tolerance keeps exact ring edges in their ring).
    ring = np.ceil(radius / 0.5 * bins - 1e-9).astype(int) - 1
    ring[(ring < 0) | (ring > bins)] = bins
    counts = np.bincount(ring.ravel(), minlength=bins + 1)[:bins]
    if (counts == 0).any():
        raise DataError("the body's in-plane box is too small for the spectrum's frequency rings")
    taper = np.outer(np.hanning(height), np.hanning(width))
    spectra = []
    for index in range(volume.shape[0]):
        inside = mask[index][box]
        if inside.mean() < SPECTRUM_MIN_BODY_FRACTION:
            continue
        image = volume[index][box].astype(np.float64)
        image = np.where(inside, image, image[inside].mean())
        power = np.abs(np.fft.fft2((image - image.mean()) * taper)) ** 2
        rings = np.bincount(ring.ravel(), weights=power.ravel(), minlength=bins + 1)[:bins] / counts
        total = rings.sum()
        if total > 0:
            spectra.append(rings / total)
    if not spectra:
        raise DataError("no axial slice has enough body for a texture spectrum")
    floor = 1e-12  # a flat slice's empty rings stay finite in log
    return np.mean(np.log10(np.maximum(np.stack(spectra), floor)), axis=0)


def spectrum_distance(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """Mean |difference| (decades) of the :func:`radial_spectrum` of the two volumes, each
    :func:`normalise` d first (the normalisation does not change a spectrum's shape but keeps the
    inputs like :func:`compare`'s)."""
    mask = _check_pair(reference, prediction, mask)
    ref = radial_spectrum(normalise(reference, mask), mask)
    pred = radial_spectrum(normalise(prediction, mask), mask)
    return float(np.mean(np.abs(ref - pred)))


def _erode(mask: np.ndarray) -> np.ndarray:
    """``mask`` eroded by one 6-connected voxel (voxels on the volume's edge are dropped)."""
    inner = mask.copy()
    inner[0], inner[-1] = False, False
    inner[:, 0], inner[:, -1] = False, False
    inner[:, :, 0], inner[:, :, -1] = False, False
    for axis in range(3):
        inner &= np.roll(mask, 1, axis) & np.roll(mask, -1, axis)
    return inner


def gradient_magnitude(volume: np.ndarray) -> np.ndarray:
    """|grad| by central differences in voxel units (float64)."""
    grads = np.gradient(volume.astype(np.float64))
    return np.sqrt(sum(g * g for g in grads))


def gradient_distance(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """1D Wasserstein distance (mean |quantile difference| over :data:`GRADIENT_QUANTILES`) between
    the gradient magnitudes of the two :func:`normalise` d volumes over the mask eroded by one voxel
    (so the body's outline, shared by both, does not dominate). A blur lowers the gradients inside
    tissues, noise raises them."""
    mask = _check_pair(reference, prediction, mask)
    inner = _erode(mask)
    if not inner.any():
        inner = mask
    ref = gradient_magnitude(normalise(reference, mask))[inner]
    pred = gradient_magnitude(normalise(prediction, mask))[inner]
    return float(np.mean(np.abs(np.quantile(ref, GRADIENT_QUANTILES) - np.quantile(pred, GRADIENT_QUANTILES))))


def texture(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> Texture:
    """Both texture distances of ``prediction`` from ``reference`` inside ``mask``."""
    return Texture(spectrum=spectrum_distance(reference, prediction, mask),
                   gradient=gradient_distance(reference, prediction, mask))
