"""PNG montages: size, content and the errors of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ct2mri_node.errors import DataError
from ct2mri_node.render.montage import Row, auto_window, render, write_case_montage


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ball (CT 300 HU, MR with a gradient) in a 10 x 30 x 40 volume of air."""
    z, y, x = np.meshgrid(np.arange(10), np.arange(30), np.arange(40), indexing="ij")
    ball = ((z - 5) / 5.0) ** 2 + ((y - 15) / 12.0) ** 2 + ((x - 20) / 16.0) ** 2 < 1
    ct = np.where(ball, 300.0, -1000.0).astype(np.float32)
    mr = np.where(ball, 400.0 + 20.0 * x, 5.0).astype(np.float32)
    return ct, mr, ball


def test_three_by_three_png_of_expected_size(tmp_path: Path) -> None:
    ct, mr, mask = _volumes()
    path = write_case_montage(tmp_path / "m" / "case.png", ct, mr, mr * 0.5, (4.0, 1.0, 1.0), mask, cell=64)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (3 * 64, 3 * 64)
        pixels = np.asarray(image)
    # The centre of each axial panel is inside the ball (bright); a corner is background (dark).
    for row in range(3):
        assert pixels[row * 64 + 32, 32] > 100
        assert pixels[row * 64 + 60, 60] < 30


def test_anisotropic_planes_keep_their_aspect_in_mm() -> None:
    """A uniform volume fills each panel's footprint: 40 x 30 mm axial, 40 x 40 mm coronal."""
    uniform = np.full((10, 30, 40), 100.0, dtype=np.float32)
    image = np.asarray(render([Row("CT", uniform, (0.0, 100.0))], (4.0, 1.0, 1.0), cell=80, labels=False))

    def footprint(panel: np.ndarray) -> tuple[int, int]:
        lit = panel > 0
        return int(lit.any(axis=1).sum()), int(lit.any(axis=0).sum())

    assert footprint(image[:, :80]) == (60, 80)
    assert footprint(image[:, 80:160]) == (80, 80)
    assert footprint(image[:, 160:]) == (80, 60)


def test_preview_without_synthetic_has_two_rows(tmp_path: Path) -> None:
    ct, mr, mask = _volumes()
    path = write_case_montage(tmp_path / "p.png", ct, mr, None, (4.0, 1.0, 1.0), mask, cell=32, labels=False)
    with Image.open(path) as image:
        assert image.size == (96, 64)


def test_auto_window_spans_percentiles() -> None:
    values = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
    centre, width = auto_window(values)
    assert centre == pytest.approx(50.0) and width == pytest.approx(98.0)
    assert auto_window(np.full((2, 2, 2), 800.0)) == (800.0, 800.0)


def test_bad_input_raises_data_error() -> None:
    ct, mr, _ = _volumes()
    with pytest.raises(DataError, match="share one shape"):
        render([Row("CT", ct), Row("MR", mr[:-1])], (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="at least one"):
        render([], (1.0, 1.0, 1.0))
