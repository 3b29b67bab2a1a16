"""The project's one exception tree.

Every expected failure raises a subclass of :class:`Ct2MriError`; its message says what was
wrong and, where possible, what to do about it. The CLI maps each branch to an exit code.
"""

from __future__ import annotations


class Ct2MriError(Exception):
    """Root of every error ct2mri-node raises on purpose."""

    exit_code: int = 1


class ConfigError(Ct2MriError):
    """The configuration (YAML or command-line options) is invalid."""

    exit_code = 2


class InputError(Ct2MriError):
    """Input given by a user (a path, a folder, a data set) cannot be used."""

    exit_code = 3


class SeriesRejected(InputError):
    """A CT series cannot be made into a volume; ``reason`` is a short machine-readable code."""

    def __init__(self, message: str, reason: str = "invalid_series") -> None:
        super().__init__(message)
        self.reason = reason


class DataError(InputError):
    """Training or evaluation data (SynthRAD layout, phantoms) is missing or malformed."""


class CheckpointError(Ct2MriError):
    """A model checkpoint is missing, incomplete or inconsistent with its card."""

    exit_code = 4


class ModelError(Ct2MriError):
    """The model failed at run time (device unavailable, out of memory, ...)."""

    exit_code = 5


class SpoolError(Ct2MriError):
    """The spool cannot store or read what it must (disk full, permissions)."""


class JobError(Ct2MriError):
    """A job cannot proceed (unknown job, wrong state, a record that cannot be written)."""


class SendError(Ct2MriError):
    """Delivering to a destination failed; ``permanent`` says whether retrying can help, and
    ``retry_after_s`` how long the peer asked us to wait before trying again (HTTP Retry-After)."""

    def __init__(self, message: str, permanent: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s
