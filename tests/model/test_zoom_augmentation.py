"""Scale augmentation of training patches (`train --zoom`): the resampled patch shows the same
field of view at another voxel size, batches stay reproducible per iteration, validation and
runs without zoom are unchanged, and bad values are refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.errors import ConfigError, DataError
from ct2mri_node.model.trainer import PatchSampler, PreparedCase, resample_patch
from ct2mri_node.training.train import TrainRequest, run_training
from ct2mri_node.model.testing import tiny_prepared_cases


def ramp_case(n: int = 96) -> PreparedCase:
    """CT channel 0 and MR both equal to z / n (a linear ramp along z), the whole grid body."""
    z = np.broadcast_to((np.arange(n, dtype=np.float32) / n)[:, None, None], (n, n, n))
    ct = np.stack([z, -z]).astype(np.float32)
    return PreparedCase("ramp", ct, z.copy(), np.ones((n, n, n), bool))


def test_resample_patch_keeps_the_field_of_view() -> None:
    side, patch = 48, 32
    z = np.broadcast_to(np.arange(side, dtype=np.float32)[:, None, None], (side,) * 3)
    ct, mr = resample_patch(np.stack([z, 2 * z]), z.copy(), patch)
    assert ct.shape == (2, patch, patch, patch) and mr.shape == (patch,) * 3
    assert ct.dtype == np.float32 and mr.dtype == np.float32
    # a ramp of slope 1 per source voxel becomes slope side/patch per output voxel
    slope = np.diff(mr[:, patch // 2, patch // 2])[2:-2]
    assert np.allclose(slope, side / patch, atol=1e-4)
    assert np.allclose(ct[1], 2 * ct[0]) and np.allclose(ct[0], mr)
    # the mean over the field of view is kept (cell-centre sampling, no half-voxel shift)
    assert math.isclose(float(mr.mean()), float(z.mean()), abs_tol=1e-3)


def test_zoomed_patches_vary_in_scale_and_are_reproducible() -> None:
    patch = 16
    sampler = PatchSampler([ramp_case()], patch, seed=3, zoom=2.0)
    slopes = []
    for iteration in range(40):
        ct, mr = sampler.batch_at(iteration, 1)
        assert ct.shape == (1, 2, patch, patch, patch) and mr.shape == (1, 1, patch, patch, patch)
        profile = mr[0, 0, :, patch // 2, patch // 2].numpy()
        slopes.append(float(np.median(np.diff(profile[2:-2]))) * 96)  # source voxels per output voxel
    slopes_arr = np.array(slopes)
    assert 0.5 - 1e-3 <= slopes_arr.min() and slopes_arr.max() <= 2.0 + 1e-3
    assert slopes_arr.min() < 0.8 and slopes_arr.max() > 1.25  # both directions are drawn
    again = PatchSampler([ramp_case()], patch, seed=3, zoom=2.0)
    a, b = sampler.batch_at(7, 2), again.batch_at(7, 2)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))


def test_without_zoom_and_for_validation_patches_are_cut_as_before() -> None:
    patch = 16
    plain = PatchSampler([ramp_case()], patch, seed=1)
    zoomed = PatchSampler([ramp_case()], patch, seed=1, zoom=1.5)
    for iteration in range(5):
        mr = plain.batch_at(iteration, 2)[1][:, 0, :, patch // 2, patch // 2].numpy()
        assert np.allclose(np.diff(mr, axis=1) * 96, 1.0, atol=1e-5)  # native scale, one voxel per voxel
        rng_a, rng_b = np.random.default_rng(iteration), np.random.default_rng(iteration)
        val_plain, val_zoomed = plain.batch(rng_a, 2, augment=False), zoomed.batch(rng_b, 2, augment=False)
        assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(val_plain, val_zoomed))


def test_zoom_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="zoom"):
        PatchSampler([ramp_case(32)], 16, zoom=0.5)
    request = TrainRequest(data=tmp_path, out=tmp_path / "run", iterations=2, batch_size=1, patch=8,
                           base_channels=2, zoom=5.0, command="test")
    with pytest.raises(ConfigError, match="--zoom"):
        run_training(request, tiny_prepared_cases())


@pytest.mark.parametrize("option, value", [("zoom", 1.5), ("paste", 0.5)])
def test_an_augmented_run_trains_and_resumes(tmp_path: Path, option: str, value: float) -> None:
    """Either augmentation (--zoom here, --paste of test_paste_augmentation) trains and resumes."""
    request = TrainRequest(data=tmp_path, out=tmp_path / "run", iterations=3, batch_size=2, patch=8,
                           base_channels=2, val_every=2, command=f"test --{option} {value}", **{option: value})
    _, first = run_training(request, tiny_prepared_cases())
    assert first.iterations == 3 and np.isfinite(first.last_loss)
    again = TrainRequest(**{**request.__dict__, "iterations": 4})
    _, second = run_training(again, tiny_prepared_cases())
    assert second.resumed_from == 3 and second.iterations == 4
