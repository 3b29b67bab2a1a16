"""Fixtures for the reliability tests; helpers live in relkit.py, node helpers in tests/node/nodekit.py."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "node"))   # nodekit (reused, not copied)

from nodekit import CaptureSCP  # noqa: E402

from ct2mri_node.config import NodeConfig  # noqa: E402
from ct2mri_node.model.testing import make_tiny_checkpoint  # noqa: E402
from ct2mri_node.model.translator import TranslationSettings, Translator  # noqa: E402
from ct2mri_node.node import Node  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


@pytest.fixture(scope="session")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator(tiny_checkpoint, TranslationSettings(steps=2, device="cpu"))


@pytest.fixture
def start_node(translator: Translator) -> Iterator[Callable[[NodeConfig], Node]]:
    """Start in-process nodes with the tiny translator; all are stopped after the test."""
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
    scp = CaptureSCP().start()
    yield scp
    scp.stop()
