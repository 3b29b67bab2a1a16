"""Fixtures for the DICOM tests: a small CT volume in HU."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_checks import phantom_hu


@pytest.fixture
def hu() -> np.ndarray:
    return phantom_hu()
