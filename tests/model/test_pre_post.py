"""Post-processing properties: range, zero outside the body, monotonic mapping, window."""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.model import pre_post


def test_body_mask_takes_the_largest_component_and_fills_holes(small_ct: np.ndarray) -> None:
    ct = small_ct.copy()
    ct[10, 12:14, 12:14] = -1000.0          # a hole inside the body
    ct[0, 0:2, 0:2] = 100.0                 # a small detached blob (table, noise)
    mask = pre_post.body_mask(ct)
    assert mask[10, 12, 12] and not mask[0, 0, 0]
    assert mask.sum() == ((small_ct > -500).sum())


def test_intensity_mapping_is_clipped_linear() -> None:
    mapping = pre_post.IntensityMapping.linear(-1000.0, 1000.0)
    out = mapping.encode(np.array([-3000.0, -1000.0, 0.0, 1000.0, 5000.0]))
    assert out.shape == (1, 5) and out[0].tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]


def test_ct_windows_spread_soft_tissues_over_the_input_range() -> None:
    """CSF (5 HU), white matter (28), urine (8) and muscle (50) are 0.01-0.03 apart on the linear
    mapping, about the CT noise; the brain window puts them 0.3-1 apart."""
    mapping = pre_post.IntensityMapping()
    assert mapping.channels == 4 and mapping.hu_range == (-1024.0, 2000.0)
    csf, wm, urine, muscle = mapping.encode(np.array([5.0, 28.0, 8.0, 50.0]))[0]
    assert wm - csf > 0.5 and muscle - urine > 1.0
    linear = pre_post.IntensityMapping.linear().encode(np.array([5.0, 28.0]))[0]
    assert linear[1] - linear[0] < 0.02
    # every channel in [-1, 1], air and dense bone saturate the narrow windows
    channels = mapping.encode(np.array([-1024.0, -100.0, 260.0, 1200.0, 3000.0]))
    assert channels.min() >= -1.0 and channels.max() <= 1.0
    assert channels[0, 0] == -1.0 and channels[0, 3] == 1.0 and channels[3, 4] == 1.0


def test_card_mapping_round_trip_and_v02_cards() -> None:
    mapping = pre_post.IntensityMapping()
    card = mapping.to_card("fat")
    assert pre_post.IntensityMapping.from_card(card) == mapping
    assert card["mr"]["name"] == "fat"
    old = {"ct": {"hu_min": -1024.0, "hu_max": 2000.0, "maps_to": [-1.0, 1.0], "method": "clip then linear"}}
    assert pre_post.IntensityMapping.from_card(old) == pre_post.IntensityMapping.linear(-1024.0, 2000.0)


def test_fat_anchored_mr_target_is_the_same_for_every_case_scale() -> None:
    """Fat maps to +0.6 whatever the case's MR scale or the share of each tissue; a case without
    enough fat falls back to its 99th percentile."""
    rng = np.random.default_rng(0)
    ct = np.full((20, 20, 40), 50.0, np.float32)
    ct[:, :, :20] = -100.0
    mask = np.ones(ct.shape, bool)
    for gain in (1.0, 7.5):
        mr = np.where(ct < 0, 900.0, 400.0).astype(np.float32) * gain + rng.normal(0, 1, ct.shape).astype(np.float32)
        target = pre_post.normalise_mr(mr, ct, mask, "fat")
        assert abs(float(np.median(target[:, :, 2:18])) - 0.6) < 0.01
        assert abs(float(np.median(target[:, :, 22:38])) - (400 / 900 * 1.6 - 1)) < 0.01
    no_fat = np.full(ct.shape, 50.0, np.float32)
    assert pre_post.fat_anchor(mr, no_fat, mask) == pytest.approx(float(np.percentile(mr, 99)))
    with pytest.raises(Exception, match="unknown MR normalisation"):
        pre_post.normalise_mr(mr, ct, mask, "zscore")


def test_resample_round_trip_keeps_smooth_data() -> None:
    z, y, x = np.meshgrid(np.arange(20), np.arange(30), np.arange(10), indexing="ij")
    vol = (z + 0.5 * y - x).astype(np.float32)
    down = pre_post.resample(vol, (10, 15, 5))
    assert down.shape == (10, 15, 5)
    up = pre_post.resample(down, vol.shape)
    inner = np.s_[2:-2, 2:-2, 2:-2]
    np.testing.assert_allclose(up[inner], vol[inner], atol=1e-3)
    assert pre_post.model_shape((128, 256, 256), (2.5, 1.5, 1.5), (3.0, 3.0, 3.0)) == (107, 128, 128)


def test_postprocessing_properties() -> None:
    rng = np.random.default_rng(0)
    raw = np.linspace(-1, 1, 16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16)
    raw += rng.normal(0, 0.01, raw.shape).astype(np.float32)
    mask = np.zeros(raw.shape, bool)
    mask[2:14, 2:14, 2:14] = True
    unit = pre_post.postprocess_model_grid(raw, mask)
    assert unit.min() >= 0.0 and unit.max() <= 1.0
    order = np.argsort(raw[mask])
    assert np.all(np.diff(unit[mask][order]) >= -1e-6)  # monotonic: the mapping is a CDF blend
    mr, center, width = pre_post.to_uint12(unit, mask)
    assert mr.dtype == np.uint16 and mr.max() <= 4095 and mr.max() > 3500
    assert mr[~mask].max() == 0
    assert 0 <= center - width / 2 and center + width / 2 <= 4095 and width >= 1


def test_contrast_enhancement_spreads_a_narrow_histogram() -> None:
    rng = np.random.default_rng(0)
    values = np.clip(rng.normal(0.5, 0.05, (20, 20, 20)), 0, 1).astype(np.float32)
    out = pre_post.enhance_contrast(values, np.ones(values.shape, bool))
    assert out.std() > 1.5 * values.std()


def test_empty_mask_falls_back_to_the_whole_volume() -> None:
    lo, hi = pre_post.robust_range(np.arange(100, dtype=np.float32), np.zeros(100, bool))
    assert lo == pytest.approx(0.99) and hi == pytest.approx(98.01)
