"""Fault injection for crash tests: the process SIGKILLs itself at a named point.

Off unless the environment says otherwise: ``CT2MRI_FAULT=<point>[,<point>...]`` kills the
process the first time (or, with ``<point>@N``, the N-th time) it reaches one of the points.
The kill is a real ``kill -9``: no ``finally`` blocks, no flushing, exactly like a power cut
of the process. Points (see :data:`POINTS`) are placed where a crash is most dangerous.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

#: The environment variable that arms fault points (tests and benchmarks only).
FAULT_ENV = "CT2MRI_FAULT"

#: Every point the code calls :func:`fault_point` with.
POINTS: tuple[str, ...] = (
    "mid_association",           # an instance is spooled, its success not yet answered
    "after_spool_before_job",    # series complete, its job record not yet queued
    "during_translation",        # the job is claimed, the MR series not yet written
    "after_translation",         # the MR series is written, not yet marked translated
    "between_sends",             # one destination has the series, the next not yet
    "after_send_before_record",  # a destination has the series, the job store does not know yet
)

_counts: dict[str, int] = {}
_lock = threading.Lock()


def _armed() -> dict[str, int]:
    """``{point: hit number that kills}`` from the environment (read on every call: cheap)."""
    armed: dict[str, int] = {}
    for item in os.environ.get(FAULT_ENV, "").split(","):
        name, _, nth = item.strip().partition("@")
        if name:
            armed[name] = int(nth) if nth.isdigit() and int(nth) > 0 else 1
    return armed


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``name`` is armed for this hit; otherwise do nothing."""
    armed = _armed()
    if name not in armed:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name]
    if hit == armed[name]:
        log.warning("fault injection: killing the process at %s (hit %d)", name, hit)
        os.kill(os.getpid(), signal.SIGKILL)
