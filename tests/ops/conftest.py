"""Fixtures for the operations tests: the node test helpers and one tiny translator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "node"))   # nodekit helpers

from nodekit import CaptureSCP  # noqa: E402

from ct2mri_node.model.testing import make_tiny_checkpoint  # noqa: E402
from ct2mri_node.model.translator import TranslationSettings, Translator  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator(tiny_checkpoint, TranslationSettings(steps=2, device="cpu"))


@pytest.fixture
def capture() -> Iterator[CaptureSCP]:
    scp = CaptureSCP().start()
    yield scp
    scp.stop()
