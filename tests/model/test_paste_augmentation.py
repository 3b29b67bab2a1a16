"""Structure paste augmentation (`train --paste`): blobs of one case's own CT and MR moved within
it stay true pairs, sources are drawn evenly over MR intensity (rare tissues as often as common
ones), batches stay reproducible per iteration, runs without it and validation batches are
unchanged, and bad values are refused (a pasted run training and resuming is in
test_zoom_augmentation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.errors import ConfigError, DataError
from ct2mri_node.model.testing import tiny_prepared_cases
from ct2mri_node.model.trainer import PASTE_RADIUS, PatchSampler, PreparedCase, blob_mask, paste_structures
from ct2mri_node.training.train import TrainRequest, run_training


def two_tissue_case(n: int = 48) -> PreparedCase:
    """A cube of 'white matter' (CT 0.3, MR 0.5) holding one small 'fluid' ball (CT -0.8, MR -0.9)
    of about 0.5 % of the voxels: channel 1 of the CT is channel 0 negated."""
    grid = np.indices((n, n, n)) - n // 2
    ball = (grid**2).sum(0) <= 9
    ct0 = np.where(ball, -0.8, 0.3).astype(np.float32)
    mr = np.where(ball, -0.9, 0.5).astype(np.float32)
    return PreparedCase("two", np.stack([ct0, -ct0]), mr, np.ones((n, n, n), bool))


def test_blob_masks_are_small_centred_and_varied() -> None:
    rng = np.random.default_rng(0)
    masks = [blob_mask(rng) for _ in range(200)]
    volumes = np.array([m.sum() for m in masks])
    assert volumes.min() >= 1
    # a ball of the largest radius stretched 1.4x per axis bounds every blob
    assert volumes.max() <= 4 / 3 * np.pi * (1.4 * PASTE_RADIUS[1]) ** 3 * 1.5
    assert np.percentile(volumes, 10) < 30 and np.percentile(volumes, 90) > 150  # sizes spread
    for mask in masks:
        assert all(side % 2 == 1 for side in mask.shape)
        centre = tuple(side // 2 for side in mask.shape)
        assert mask[centre] or mask.sum() < 8  # the blob sits on its cube's centre


def test_pasted_voxels_are_true_pairs_from_the_source() -> None:
    rng = np.random.default_rng(1)
    source_ct = rng.uniform(-1, 1, (2, 24, 24, 24)).astype(np.float32)
    source_ct[1] = 2 * source_ct[0]
    source_mr = (0.5 * source_ct[0]).astype(np.float32)
    ct = np.full((2, 24, 24, 24), 5.0, np.float32)
    mr = np.full((24, 24, 24), 7.0, np.float32)
    changed = paste_structures(rng, ct, mr, source_ct, source_mr)
    moved = mr != 7.0
    assert changed >= moved.sum() > 0
    # every pasted voxel carries one source voxel's CT channels and MR together
    assert np.allclose(mr[moved], 0.5 * ct[0][moved]) and np.allclose(ct[1][moved], 2 * ct[0][moved])
    assert np.all(ct[0][~moved] == 5.0) and np.all(ct[1][~moved] == 5.0)
    values = set(np.round(source_mr.ravel(), 6))
    assert set(np.round(mr[moved], 6)) <= values


def test_rare_tissue_is_pasted_about_as_often_as_the_common_one() -> None:
    case = two_tissue_case()
    rng = np.random.default_rng(2)
    fluid = white = 0
    for _ in range(200):
        ct = np.zeros((2, 48, 48, 48), np.float32)
        mr = np.zeros((48, 48, 48), np.float32)
        paste_structures(rng, ct, mr, case.ct, case.mr)
        fluid += int((mr == np.float32(-0.9)).sum() > 0)
        white += int((mr == np.float32(0.5)).sum() > 0)
    # the fluid ball is 0.5 % of the source; drawn evenly over MR bins it seeds about half the blobs
    assert fluid > 100 and white > 100


def test_paste_is_reproducible_and_leaves_plain_and_validation_batches_alone() -> None:
    patch = 16
    pasted = PatchSampler([two_tissue_case()], patch, seed=4, paste=1.0)
    again = PatchSampler([two_tissue_case()], patch, seed=4, paste=1.0)
    a, b = pasted.batch_at(3, 2), again.batch_at(3, 2)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))
    plain = PatchSampler([two_tissue_case()], patch, seed=4)
    off = PatchSampler([two_tissue_case()], patch, seed=4, paste=0.0)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(plain.batch_at(5, 2), off.batch_at(5, 2)))
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    val_plain, val_pasted = plain.batch(rng_a, 2, augment=False), pasted.batch(rng_b, 2, augment=False)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(val_plain, val_pasted))
    # a patch that is the whole case: pasting moves fluid into it (evenly drawn sources)
    whole, whole_plain = (PatchSampler([two_tissue_case(patch)], patch, seed=4, paste=p) for p in (1.0, 0.0))
    changed = sum(int((whole.batch_at(i, 1)[1] != whole_plain.batch_at(i, 1)[1]).any()) for i in range(20))
    assert changed >= 10


def test_paste_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="paste"):
        PatchSampler([two_tissue_case(32)], 16, paste=1.5)
    request = TrainRequest(data=tmp_path, out=tmp_path / "run", iterations=2, batch_size=1, patch=8,
                           base_channels=2, paste=-0.1, command="test")
    with pytest.raises(ConfigError, match="--paste"):
        run_training(request, tiny_prepared_cases())

