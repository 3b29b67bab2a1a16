"""Session-wide test settings: pydicom validates strictly, as highdicom's tests do."""

from __future__ import annotations

import os

import pydicom.config

# Every object we read or write in the tests must be valid DICOM; a lenient default would hide
# encoder bugs. Code under test that reads hostile input handles its own validation.
pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE

# dcmtk and Orthanc stall ~40 ms per C-STORE with Nagle's algorithm on.
os.environ.setdefault("TCP_NODELAY", "1")

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
    from ct2mri_node.node import Node

    nodes: list[Node] = []

    def start(config: NodeConfig) -> Node:
        node = Node(config, translator=translator)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def capture() -> Iterator[CaptureSCP]:
    """A pynetdicom SCP on a free loopback port that records what it receives."""
    from nodekit import CaptureSCP

    scp = CaptureSCP().start()
    yield scp
    scp.stop()
