"""Fixtures for the scale-out tests: helpers in scalekit.py; node and reliability kits reused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scalekit import Postgres, Redis, redis_available, require_postgres, start_postgres


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A fresh redis-server (append-only file on) for one test."""
    if not redis_available():
        pytest.fail("redis-server is not installed; run deploy/install.sh (it installs the Debian package)")
    server = Redis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One throw-away PostgreSQL server for the session (``initdb`` in a temporary folder, a free
    loopback port); tests take a fresh database each with ``postgres_server.database()``. Missing
    binaries fail under CI and skip elsewhere (``require_peer``)."""
    require_postgres()
    server = start_postgres()
    yield server
    server.remove()
