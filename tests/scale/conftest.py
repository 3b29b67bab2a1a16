"""Fixtures for the scale-out tests: helpers in scalekit.py; node and reliability kits reused."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _kit in ("node", "reliability"):   # nodekit, relkit (reused, not copied)
    if str(_TESTS / _kit) not in sys.path:
        sys.path.insert(0, str(_TESTS / _kit))

from scalekit import Redis, redis_available  # noqa: E402


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A fresh redis-server (append-only file on) for one test."""
    if not redis_available():
        pytest.fail("redis-server is not installed; run deploy/install.sh (it installs the Debian package)")
    server = Redis(tmp_path / "redis").start()
    yield server
    server.stop()
