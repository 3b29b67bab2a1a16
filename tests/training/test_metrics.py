"""SynthRAD-style masked metrics on inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.training.metrics import (
    PSNR_CAP_DB,
    SPECTRUM_BINS,
    compare,
    gaussian_filter,
    gaussian_kernel,
    gradient_distance,
    masked_mae,
    masked_psnr,
    masked_ssim,
    normalise,
    radial_spectrum,
    spectrum_distance,
    texture,
)


@pytest.fixture()
def volume() -> tuple[np.ndarray, np.ndarray]:
    """A smooth random volume in [0, 1] (normalised units) and a box mask inside it."""
    rng = np.random.default_rng(7)
    vol = gaussian_filter(rng.random((16, 20, 24)), 1.5)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    mask = np.zeros(vol.shape, dtype=bool)
    mask[2:-2, 3:-3, 3:-3] = True
    return vol, mask


def test_identical_volumes_score_perfectly(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    result = compare(vol * 900 + 30, vol * 900 + 30, mask)
    assert result.mae == 0.0
    assert result.psnr == PSNR_CAP_DB
    assert result.ssim == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_gives_known_mae_and_psnr(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    data_range = float(vol[mask].max() - vol[mask].min())
    assert masked_mae(vol, vol + 0.1, mask) == pytest.approx(0.1)
    expected = 10 * math.log10(data_range**2 / 0.01)
    assert masked_psnr(vol, vol + 0.1, mask) == pytest.approx(expected)
    assert masked_psnr(vol, vol - 0.1, mask, data_range=1.0) == pytest.approx(20.0)


def test_differences_outside_the_mask_do_not_count(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    other = np.where(mask, vol, 5.0)
    assert masked_mae(vol, other, mask) == 0.0
    assert masked_psnr(vol, other, mask) == PSNR_CAP_DB


def test_normalisation_removes_gain_and_offset(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    result = compare(vol, 3.0 * vol + 200.0, mask)
    assert result.mae == pytest.approx(0.0, abs=1e-12)
    assert result.ssim == pytest.approx(1.0, abs=1e-9)
    norm = normalise(vol * 7, mask)
    assert norm.min() == 0.0 and norm.max() == 1.0
    assert np.mean(norm[mask] == 0.0) == pytest.approx(0.01, abs=0.01)


def test_noise_lowers_ssim_and_psnr_monotonically(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(vol.shape)
    scores = [compare(vol, vol + level * noise, mask) for level in (0.02, 0.1, 0.3)]
    assert 1.0 > scores[0].ssim > scores[1].ssim > scores[2].ssim
    assert scores[0].psnr > scores[1].psnr > scores[2].psnr
    assert scores[0].mae < scores[1].mae < scores[2].mae


def test_ssim_of_unrelated_volumes_is_low(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    other = np.random.default_rng(5).random(vol.shape)
    assert masked_ssim(vol, other, mask, 1.0) < 0.5  # luminance alone keeps it above 0


def test_constant_prediction_scores_badly_without_failing(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    result = compare(vol, np.full(vol.shape, 12.0), mask)
    assert math.isfinite(result.mae) and math.isfinite(result.psnr) and math.isfinite(result.ssim)
    assert result.ssim < 0.5


def test_bad_inputs_raise_data_errors(volume: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = volume
    with pytest.raises(DataError, match="same shape"):
        compare(vol, vol[:-1], mask)
    with pytest.raises(DataError, match="mask is empty"):
        compare(vol, vol, np.zeros_like(mask))
    with pytest.raises(DataError, match="constant"):
        compare(np.ones_like(vol), vol, mask)


def test_gaussian_filter_keeps_constants_and_mass() -> None:
    kernel = gaussian_kernel(1.5)
    assert len(kernel) == 11 and kernel.sum() == pytest.approx(1.0)
    const = np.full((5, 6, 7), 3.0)
    np.testing.assert_allclose(gaussian_filter(const, (1.5, 0.0, 4.0)), const)
    impulse = np.zeros((1, 1, 41))
    impulse[0, 0, 20] = 1.0
    smoothed = gaussian_filter(impulse, (0.0, 0.0, 2.0))
    assert smoothed.sum() == pytest.approx(1.0)
    assert smoothed[0, 0, 20] == pytest.approx(kernel_peak := gaussian_kernel(2.0).max())
    assert kernel_peak < 0.25


def test_masked_ssim_matches_skimage_with_an_all_true_mask() -> None:
    """Our SSIM map is skimage's (Gaussian window, sigma 1.5, population covariances), mean over the
    voxels at least SSIM_BORDER from the edge."""
    from skimage.metrics import structural_similarity  # the test extra has it

    from ct2mri_node.training.metrics import SSIM_BORDER

    rng = np.random.default_rng(11)
    reference = gaussian_filter(rng.random((18, 22, 26)), 1.2)
    prediction = 0.7 * reference + 0.3 * gaussian_filter(rng.random(reference.shape), 2.0)
    mask = np.ones(reference.shape, dtype=bool)
    data_range = float(reference.max() - reference.min())
    _, full = structural_similarity(reference, prediction, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=data_range, full=True)
    b = SSIM_BORDER
    expected = float(full[b:-b, b:-b, b:-b].mean())
    ours = masked_ssim(reference, prediction, mask, data_range)
    assert ours == pytest.approx(expected, abs=1e-6)
    assert 0.3 < ours < 0.99  # a non-trivial comparison


# ------------------------------------------------------------------------------------- texture
@pytest.fixture()
def textured() -> tuple[np.ndarray, np.ndarray]:
    """A textured volume (smoothed noise, correlation length ~1 voxel, on a ramp) and a body mask
    that does not fill its in-plane box (an ellipse), so the background handling is exercised."""
    rng = np.random.default_rng(11)
    vol = gaussian_filter(rng.normal(size=(12, 48, 56)), 0.8) + np.linspace(0, 0.5, 56)
    z, y, x = np.mgrid[:12, :48, :56]
    mask = ((y - 24) / 20.0) ** 2 + ((x - 28) / 25.0) ** 2 <= 1.0
    return vol, mask


def test_texture_of_a_volume_against_itself_is_zero(textured: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = textured
    result = texture(vol, vol * 3.0 + 100.0, mask)  # gain and offset are normalised away
    assert result.spectrum == pytest.approx(0.0, abs=1e-9)
    assert result.gradient == pytest.approx(0.0, abs=1e-9)


def test_blurring_moves_the_texture_away_monotonically(textured: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = textured
    spectra = [spectrum_distance(vol, gaussian_filter(vol, s), mask) for s in (0.6, 1.2, 2.4)]
    gradients = [gradient_distance(vol, gaussian_filter(vol, s), mask) for s in (0.6, 1.2, 2.4)]
    assert 0.05 < spectra[0] < spectra[1] < spectra[2]
    assert spectrum_distance(gaussian_filter(vol, 1.2), vol, mask) == pytest.approx(spectra[1], rel=1e-12)
    assert 0.0 < gradients[0] < gradients[1] < gradients[2]


def test_a_blurred_copy_is_farther_than_a_slightly_noisy_one(textured: tuple[np.ndarray, np.ndarray]) -> None:
    """Texture, unlike MAE, prefers keeping the high frequencies: a blur changes the spectrum's
    shape, a little added noise of the same kind barely does."""
    vol, mask = textured
    rng = np.random.default_rng(3)
    noisy = vol + 0.1 * gaussian_filter(rng.normal(size=vol.shape), 0.8)
    blurred = gaussian_filter(vol, 1.5)
    assert spectrum_distance(vol, noisy, mask) < 0.3 * spectrum_distance(vol, blurred, mask)
    assert gradient_distance(vol, noisy, mask) < 0.5 * gradient_distance(vol, blurred, mask)


def test_white_noise_and_a_smooth_volume_have_the_spectra_they_should() -> None:
    """White noise has a flat spectrum (every ring within a factor ~1.6 of the others: log10 spread
    < 0.2); white noise smoothed by a Gaussian of sigma s has the power transfer exp(-4 pi^2 s^2 f^2),
    which the rings between 0.14 and 0.23 cycles/voxel follow to 15 % (relative to ring 2; the taper
    smears the spectrum by about a ring)."""
    rng = np.random.default_rng(5)
    mask = np.ones((16, 64, 64), dtype=bool)
    noise = rng.normal(size=mask.shape)
    smooth = gaussian_filter(noise, 3.0)
    flat = radial_spectrum(noise, mask)
    assert flat.shape == (SPECTRUM_BINS,)
    assert np.ptp(flat) < 0.2
    sigma, centres = 1.5, (np.arange(SPECTRUM_BINS) + 0.5) * 0.5 / SPECTRUM_BINS
    theory = -4 * np.pi**2 * sigma**2 * centres**2 / np.log(10)
    measured = radial_spectrum(gaussian_filter(noise, sigma), mask)
    np.testing.assert_allclose((measured - measured[2])[4:8], (theory - theory[2])[4:8], rtol=0.15)
    assert spectrum_distance(noise, smooth, mask) > 1.0
    assert gradient_distance(noise, smooth, mask) > 5 * gradient_distance(noise, noise + 0.01 * smooth, mask)


def test_the_background_outside_the_mask_does_not_count(textured: tuple[np.ndarray, np.ndarray]) -> None:
    vol, mask = textured
    rng = np.random.default_rng(9)
    other = np.where(mask, vol, rng.normal(size=vol.shape) * 50.0)
    assert texture(vol, other, mask).spectrum == pytest.approx(0.0, abs=1e-9)
    assert texture(vol, other, mask).gradient == pytest.approx(0.0, abs=1e-9)  # eroded: no outside neighbour


def test_texture_refuses_a_body_too_small() -> None:
    mask = np.zeros((4, 8, 8), dtype=bool)
    mask[:, 2:4, 2:4] = True
    with pytest.raises(DataError, match="too small"):
        spectrum_distance(np.ones(mask.shape), np.ones(mask.shape), mask)
