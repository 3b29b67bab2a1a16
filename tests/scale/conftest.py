"""Fixtures for the scale-out tests: helpers in scalekit.py; node and reliability kits reused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scalekit import Redis, redis_available


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A fresh redis-server (append-only file on) for one test."""
    if not redis_available():
        pytest.fail("redis-server is not installed; run deploy/install.sh (it installs the Debian package)")
    server = Redis(tmp_path / "redis").start()
    yield server
    server.stop()
