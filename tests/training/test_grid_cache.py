"""The grid cache: cases resampled to the model grid once, keyed by case, source, spacing and
version, and read back one patch at a time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.model.pre_post import IntensityMapping
from ct2mri_node.training import grid_cache, prepared
from ct2mri_node.training.pairs import PairedCase, write_case
from ct2mri_node.training.train import prepare_case


def case(i: int) -> PairedCase:
    ct = np.full((12, 24, 22), -1000.0, np.float32)
    ct[2:10, 4:20, 4:18] = 40.0
    ct[4:8, 8:16, 8:14] = -100.0  # fat: the MR target is anchored on it
    ct[5:7, 10:12, 10:12] = 700.0 + 50 * i
    mr = (ct > -500) * 300.0 + (ct < -50) * (ct > -500) * 600.0 + 10.0 + i
    return PairedCase(f"case{i}", ct, mr.astype(np.float32), ct > -500, (3.0, 1.5, 1.5))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for i in range(2):
        write_case(tmp_path / "data" / f"case{i}", case(i))
    return tmp_path / "data"


def test_second_run_reads_the_cache_and_another_spacing_misses_it(data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first = grid_cache.GridCache(tmp_path / "cache")
    cases = grid_cache.cached_cases(data, 3.0, first, IntensityMapping())
    assert (first.hits, first.misses) == (0, 2)

    def no_resampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("resampled although the cache holds the case")

    with monkeypatch.context() as patched:
        patched.setattr(prepared, "to_grid", no_resampling)
        again = grid_cache.GridCache(tmp_path / "cache")
        cached = grid_cache.cached_cases(data, 3.0, again, IntensityMapping())
        assert (again.hits, again.misses) == (2, 0)
    assert [c.folder for c in cached] == [c.folder for c in cases]

    other = grid_cache.GridCache(tmp_path / "cache")
    at_two = grid_cache.cached_cases(data, 2.0, other, IntensityMapping())
    assert (other.hits, other.misses) == (0, 2)
    assert at_two[0].shape != cases[0].shape

    mr_file = data / "case1" / "mr.nii.gz"  # a changed source file misses too
    os.utime(mr_file, ns=(mr_file.stat().st_atime_ns, mr_file.stat().st_mtime_ns + 10**9))
    changed = grid_cache.GridCache(tmp_path / "cache")
    grid_cache.cached_cases(data, 3.0, changed, IntensityMapping())
    assert (changed.hits, changed.misses) == (1, 1)


def test_patches_read_from_the_cache_equal_the_whole_prepared_case(data: Path, tmp_path: Path) -> None:
    """A patch read lazily (memory maps, per-case linear MR map) is the prepared case cut out:
    CT channels exactly, the MR target to float16 storage precision; beyond the case, -1."""
    for method in ("fat", "percentile"):
        cached = grid_cache.cached_cases(data, 3.0, grid_cache.GridCache(tmp_path / "cache"),
                                         IntensityMapping(), method)[1]
        whole = prepare_case(case(1), 3.0, IntensityMapping(), method)
        assert cached.shape == whole.mask.shape and cached.body_voxels == int(whole.mask.sum())
        ct, mr = cached.read((0, 0, 0), 16)
        z, y, x = whole.mask.shape
        hu_stored = np.rint(np.clip(prepared.to_grid("c", case(1).ct, case(1).mr, case(1).mask, (3.0, 1.5, 1.5),
                                                     3.0).hu, -1024, 3071))
        assert np.array_equal(ct[:, :z, :y, :x], IntensityMapping().encode(hu_stored))
        assert np.allclose(mr[:z, :y, :x], whole.mr, atol=2e-3)
        assert (ct[:, z:] == -1).all() and (mr[z:] == -1).all()
        assert tuple(cached.body_voxel(0)) == tuple(np.argwhere(whole.mask)[0])


def test_prepared_folder_goes_through_the_cache_and_evaluation_families_are_refused(data: Path,
                                                                                    tmp_path: Path) -> None:
    folder = prepared.write_prepared(data, tmp_path / "prep", 3.0)
    cache = grid_cache.GridCache(tmp_path / "cache")
    cases = grid_cache.cached_cases(folder, 3.0, cache, IntensityMapping())
    assert [c.name for c in cases] == ["case0", "case1"] and cache.misses == 2
    with pytest.raises(DataError, match="prepared at 3.0 mm"):
        grid_cache.cached_cases(folder, 2.0, cache, IntensityMapping())
    (data / "case1" / "phantom.json").write_text('{"family": "heldout"}')
    with pytest.raises(DataError, match="evaluation only"):
        grid_cache.cached_cases(data, 3.0, cache, IntensityMapping())
