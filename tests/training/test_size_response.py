"""The size-response probe: fluid balls land inside their host tissue at the asked radii, apart
from each other; a radius with no room is skipped and a host with none is refused; the ratio is 1
for a model that ignores the ball and the true contrast for one that reads it."""

from __future__ import annotations

import numpy as np
import pytest

from ct2mri_node.errors import DataError
from ct2mri_node.training.size_response import MARGIN_MM, fluid_spheres, response


def brain(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A 28 HU 'white matter' cube with a 1-voxel skull of 1000 HU; host = inside the skull."""
    ct = np.full((n, n, n), 28.0, np.float32)
    host = np.zeros((n, n, n), bool)
    host[1:-1, 1:-1, 1:-1] = True
    ct[~host] = 1000.0
    return ct, host


def test_balls_are_fluid_inside_the_host_and_apart() -> None:
    ct, host = brain()
    out, spheres = fluid_spheres(ct, host, (2.0, 2.0, 2.0), (3.0, 5.0, 10.0), np.random.default_rng(0))
    assert [s.radius_mm for s in spheres] == [3.0, 5.0, 10.0]
    for sphere in spheres:
        assert sphere.ball.sum() > 0 and (sphere.core <= sphere.ball).all() and host[sphere.ball].all()
        assert abs(float(out[sphere.ball].mean()) - 8.0) < 2.0
        centre = np.array(sphere.centre)
        assert np.all(centre * 2.0 > sphere.radius_mm + MARGIN_MM - 2.0)  # away from the skull
    for a in range(3):
        for b in range(a + 1, 3):
            assert not (spheres[a].ball & spheres[b].ball).any()
    untouched = np.ones_like(host)
    for sphere in spheres:
        untouched &= ~sphere.ball
    assert np.array_equal(out[untouched], ct[untouched])


def test_too_big_radii_are_skipped_and_no_room_is_refused() -> None:
    ct, host = brain(24)  # 44 mm across inside: room for 3 mm, none for 30 mm
    _, spheres = fluid_spheres(ct, host, (2.0, 2.0, 2.0), (3.0, 30.0), np.random.default_rng(1))
    assert [s.radius_mm for s in spheres] == [3.0]
    with pytest.raises(DataError, match="no fluid ball"):
        fluid_spheres(ct, host, (2.0, 2.0, 2.0), (30.0,), np.random.default_rng(1))
    with pytest.raises(DataError, match="shape"):
        fluid_spheres(ct, host[:-1], (2.0, 2.0, 2.0), (3.0,), np.random.default_rng(1))


def test_ratio_is_one_when_ignored_and_the_contrast_when_read() -> None:
    ct, host = brain()
    out, spheres = fluid_spheres(ct, host, (2.0, 2.0, 2.0), (4.0, 8.0), np.random.default_rng(2))
    blind = np.full(ct.shape, 700.0, np.float32)  # paints the host over everything
    assert all(abs(r - 1.0) < 1e-6 for r in response(blind, spheres, host).values())
    reader = np.where(out < 25.0, 140.0, 700.0).astype(np.float32)  # fluid dark, white matter bright
    ratios = response(reader, spheres, host)
    assert all(abs(r - 0.2) < 0.02 for r in ratios.values())
    with pytest.raises(DataError, match="black"):
        response(np.zeros(ct.shape, np.float32), spheres, host)


def test_balls_of_another_material_without_noise_are_exact() -> None:
    """--hu/--noise-hu of benchmarks/small_structures.py: fat (or bone) balls, noise-free."""
    ct, host = brain()
    out, spheres = fluid_spheres(ct, host, (2.0, 2.0, 2.0), (3.0, 7.0), np.random.default_rng(0), hu=-100.0,
                                 noise_hu=0.0)
    for sphere in spheres:
        assert np.all(out[sphere.ball] == -100.0)


def test_benchmark_refuses_a_ball_value_outside_the_ct_range() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "small_structures.py"
    done = subprocess.run([sys.executable, str(script), "--checkpoint", "bundled", "--hu", "5000"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--hu must be in -1024..3071" in done.stderr
