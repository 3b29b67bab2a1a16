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
    mapping = pre_post.IntensityMapping(-1000.0, 1000.0)
    out = mapping.normalise(np.array([-3000.0, -1000.0, 0.0, 1000.0, 5000.0]))
    assert out.tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]


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
