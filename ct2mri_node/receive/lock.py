"""The receiver lock: one process receives into a spool at a time.

The in-memory membership and free-space caches (:mod:`ct2mri_node.receive.members`) are exact
only while a single process stores into ``incoming/``; ``serve`` (any role) and ``purge`` hold
``<spool>/receiver.lock`` (``flock``) while they run.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from ..errors import ConfigError, SpoolError
from ..fsutil import try_lock


class ReceiverLock:
    """An exclusive ``flock`` on a file, held until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, path: Path) -> ReceiverLock:
        """Take the lock without waiting; ConfigError naming the spool when it is held."""
        try:
            handle = try_lock(path)
        except OSError as exc:
            raise SpoolError(f"cannot open {path}: {exc.strerror or exc}; fix the spool's permissions") from exc
        if handle is None:
            raise ConfigError(
                f"another ct2mri-node is receiving into the spool {path.parent} (it holds {path}); "
                "stop it first, or give this node its own spool_dir"
            )
        return cls(path, handle)

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
