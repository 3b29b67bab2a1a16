"""The model card's uncertainty calibration applied by the translator and stated by the map:
k x (SD + floor) inside the body, a warning when the settings differ from the calibrated ones,
and a Parametric Map whose descriptions say what the scale promises (issue 23, items 2 and 5)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.model.checkpoint import CARD
from ct2mri_node.model.translator import TranslationSettings, Translator

SECTION = {"sources": "flips", "sampler": "refine", "steps": 1, "samples": 2, "overlap": 0.5, "k": 2.5,
           "floor": 10.0, "band_sd": 2.0, "target_coverage": 0.9, "coverage_mean": 0.9,
           "cases": [{"family": "randomised", "kind": "head", "seed": 6000, "coverage": 0.9}]}


def _calibrated_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / CARD).read_text())
    data["uncertainty"] = SECTION
    (dst / CARD).write_text(json.dumps(data))
    return dst


def test_translator_applies_the_cards_scale_and_floor_inside_the_body(
        tiny_checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain_ckpt = tiny_checkpoints["enhanced"]
    calibrated_ckpt = _calibrated_copy(plain_ckpt, tmp_path / "calibrated")
    _, y, x = np.mgrid[0:8, 0:28, 0:28]
    body = np.hypot(y - 14, x - 14) < 11
    hu = np.where(body, np.where(x < 14, 700.0, 30.0), -1000.0).astype(np.float32)
    settings = TranslationSettings(steps=1, samples=2, device="cpu")
    with caplog.at_level(logging.WARNING):
        raw = Translator(plain_ckpt, settings).translate(hu, (4.0, 4.0, 4.0))
    assert "no uncertainty calibration" in caplog.text and not raw.calibration.calibrated
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        scaled = Translator(calibrated_ckpt, settings).translate(hu, (4.0, 4.0, 4.0))
    assert caplog.text == "" and scaled.calibration.matches
    assert np.array_equal(raw.mr, scaled.mr)                 # the MR does not depend on the calibration
    assert raw.uncertainty is not None and scaled.uncertainty is not None
    np.testing.assert_allclose(scaled.uncertainty[body], 2.5 * (raw.uncertainty[body] + 10.0), rtol=1e-6)
    assert np.all(scaled.uncertainty[~body] == 0.0)
    # other settings: the scale is still applied, with a warning naming what it was made for
    with caplog.at_level(logging.WARNING):
        other = Translator(calibrated_ckpt, TranslationSettings(steps=1, samples=3, device="cpu"))
    assert not other.calibration.matches and "calibrated for refine sampler, 1 steps, 2 samples" in caplog.text
    assert "other settings" in other.calibration.short_label(3)
    assert "uncalibrated" in raw.calibration.short_label(2)
    label = scaled.calibration.short_label(2)
    assert len(label) <= 64 and "2.50x(SD+10)" in label and "90%" in label
    sentence = scaled.calibration.sentence(2)
    assert "test-time flips" in sentence and "cannot see" in sentence and "90 %" in sentence
