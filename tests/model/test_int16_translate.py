"""An int16 CT (as assembly gives for slope 1, integer intercept) translates exactly like float32.

The slice-by-slice resampling to the model grid must give the values of the whole-volume,
axis-by-axis resampling it replaced, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.model import pre_post
from ct2mri_node.model.translator import Translator


def _reference(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Whole-volume linear resampling along axis 0, then 1, then 2 (the former implementation)."""
    out = arr.astype(np.float32)
    for axis, size in enumerate(shape):
        n = out.shape[axis]
        if n == size:
            continue
        pos = np.clip((np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5, 0.0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = (pos - lo).astype(np.float32).reshape([size if a == axis else 1 for a in range(3)])
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


@pytest.mark.parametrize("shape", [(7, 13, 9), (20, 40, 40), (45, 17, 80), (20, 80, 13)])
def test_slice_by_slice_resampling_equals_whole_volume(small_ct: np.ndarray,
                                                       shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    ct = small_ct + rng.normal(0, 30, small_ct.shape).astype(np.float32)
    out = pre_post.resample(ct, shape)
    assert out.dtype == np.float32 and out.shape == shape
    assert np.array_equal(out, _reference(ct, shape))


def test_int16_mapping_on_the_way_equals_float32_mapping_first(small_ct: np.ndarray) -> None:
    ct16 = (small_ct + np.arange(20, dtype=np.float32)[:, None, None] * 7).astype(np.int16)
    mapping = pre_post.IntensityMapping()
    shape = (9, 17, 23)
    fused = pre_post.resample(ct16, shape, prepare=mapping.clip)
    assert np.array_equal(fused, _reference(mapping.clip(ct16.astype(np.float32)), shape))
    mask = pre_post.body_mask(ct16)
    assert np.array_equal(mask, pre_post.body_mask(ct16.astype(np.float32)))
    assert np.array_equal(pre_post.resample(mask, shape), _reference(mask.astype(np.float32), shape))


def test_translate_int16_equals_its_float32_copy(translator: Translator,
                                                 small_ct: np.ndarray) -> None:
    ct16 = np.rint(small_ct + np.linspace(-30, 30, 40, dtype=np.float32)).astype(np.int16)
    as_int = translator.translate(ct16, (2.5, 1.0, 1.0))
    as_float = translator.translate(ct16.astype(np.float32), (2.5, 1.0, 1.0))
    assert as_int.mr.dtype == np.uint16 and as_int.mr.shape == ct16.shape
    assert np.array_equal(as_int.mr, as_float.mr)
    assert (as_int.window_center, as_int.window_width) == (as_float.window_center,
                                                           as_float.window_width)
    assert as_int.mr.max() > 0
