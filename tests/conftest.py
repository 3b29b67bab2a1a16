"""Session-wide test settings: pydicom validates strictly, as highdicom's tests do."""

from __future__ import annotations

import os
from typing import NoReturn

import pydicom.config

# Every object we read or write in the tests must be valid DICOM; a lenient default would hide
# encoder bugs. Code under test that reads hostile input handles its own validation.
pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE

# dcmtk and Orthanc stall ~40 ms per C-STORE with Nagle's algorithm on.
os.environ.setdefault("TCP_NODELAY", "1")

# -- real peers (Orthanc, dcmtk, redis-server, dciodvfy, unshare) --------------------------------
def peer_missing(reason: str) -> NoReturn:
    """A real peer a test needs cannot start: fail under CI (``CI`` set, as ``.ci/run`` does), where
    every peer is installed and a skip would hide a broken environment; skip elsewhere."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"real peer unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_peer(available: bool, reason: str) -> None:
    """:func:`peer_missing` with ``reason`` unless ``available``."""
    if not available:
        peer_missing(reason)


# -- shared fixtures of the node, reliability, operations and scale-out tests -------------------
# (the test kits, nodekit and the rest, are importable through pyproject's pytest pythonpath)
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from nodekit import CaptureSCP

    from ct2mri_node.config import NodeConfig
    from ct2mri_node.model.translator import Translator
    from ct2mri_node.node import Node


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint (meaningless output, right shapes), made once per session."""
    from ct2mri_node.model.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


@pytest.fixture(scope="session")
def translator(tiny_checkpoint: Path) -> Translator:
    """The tiny checkpoint loaded once, 2 DDIM steps on the CPU (imports torch only when used)."""
    from ct2mri_node.model.translator import TranslationSettings, Translator

    return Translator(tiny_checkpoint, TranslationSettings(steps=2, device="cpu"))


@pytest.fixture
def start_node(translator: Translator) -> Iterator[Callable[[NodeConfig], Node]]:
    """Start in-process nodes with the tiny translator; all are stopped after the test."""
    from nodekit import started_nodes

    with started_nodes(translator) as start:
        yield start


@pytest.fixture(name="require_peer")
def require_peer_fixture() -> Callable[[bool, str], None]:
    """:func:`require_peer` for test modules (a conftest is not imported by name)."""
    return require_peer


@pytest.fixture
def capture() -> Iterator[CaptureSCP]:
    """A pynetdicom SCP on a free loopback port that records what it receives."""
    from nodekit import CaptureSCP

    scp = CaptureSCP().start()
    yield scp
    scp.stop()
