"""Fixtures for the node tests (helpers live in nodekit.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from nodekit import CaptureSCP

from ct2mri_node.config import NodeConfig
from ct2mri_node.model.testing import make_tiny_checkpoint
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.node import Node


@pytest.fixture
def capture() -> Iterator[CaptureSCP]:
    scp = CaptureSCP().start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def translator(tmp_path_factory: pytest.TempPathFactory) -> Translator:
    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    return Translator(ckpt, TranslationSettings(steps=2, device="cpu"))


@pytest.fixture
def start_node(translator: Translator) -> Iterator[Callable[[NodeConfig], Node]]:
    nodes: list[Node] = []

    def start(config: NodeConfig) -> Node:
        node = Node(config, translator=translator)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()
