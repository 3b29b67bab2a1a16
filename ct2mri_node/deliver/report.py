"""What a send delivered: one report type for every kind of destination (C-STORE, STOW-RS, folder)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendReport:
    """What a successful send delivered."""

    destination: str
    instances: int
    seconds_to_first: float | None = None   # from the start of the send to the first stored instance
    warnings: int = 0                       # instances stored with a Warning status (each logged)
    skipped: tuple[str, ...] = ()           # companion SOP classes the peer did not accept (not sent)
