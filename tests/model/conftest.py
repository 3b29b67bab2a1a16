"""Shared fixtures of the model tests: tiny checkpoints and a small CT phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.model.testing import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random checkpoint per architecture, made once per session."""
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: make_tiny_checkpoint(root / arch, arch) for arch in ("enhanced", "ddpm", "unet")}


@pytest.fixture
def small_ct() -> np.ndarray:
    """A 20x40x40 CT in HU: air around a soft-tissue box with a bone core."""
    ct = np.full((20, 40, 40), -1000.0, np.float32)
    ct[3:17, 8:32, 6:34] = 40.0
    ct[8:12, 15:25, 15:25] = 900.0
    return ct
