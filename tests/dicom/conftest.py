"""Fixtures for the DICOM tests: a small CT volume in HU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # dicom_checks helpers

from dicom_checks import phantom_hu  # noqa: E402


@pytest.fixture
def hu() -> np.ndarray:
    return phantom_hu()
