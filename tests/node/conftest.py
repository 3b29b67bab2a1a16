"""Fixtures for the node tests (helpers live in nodekit.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nodekit import CaptureSCP


@pytest.fixture
def capture() -> Iterator[CaptureSCP]:
    scp = CaptureSCP().start()
    yield scp
    scp.stop()
