"""Screening a complete series before it takes a place in the translation queue.

A series that can never be translated (not CT, no usable geometry, fewer than
``series.min_slices`` slices, larger than the node accepts) would otherwise be queued, count
against ``limits.max_queued_jobs`` and take the queue from series that can be translated, only
to fail in the worker a moment later. The node runs the header checks of assembly
(:func:`ct2mri_node.volume.assemble.check_headers`, one copy of every check) on the spooled
files when the series completes: headers only, no pixel is decoded and no model time is spent.
A refused series keeps its files in the spool, like a failed job's (retention removes them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..errors import SeriesRejected
from ..volume.assemble import VolumeLimits, check_headers, read_series

log = logging.getLogger(__name__)


def screen_series(paths: Iterable[Path], limits: VolumeLimits) -> SeriesRejected | None:
    """Why the series in ``paths`` can never be translated, or None when it may be queued.

    Only the series' own faults refuse it: an unexpected error while reading (a bug, a disk
    error) admits the series, and the worker records what goes wrong, as it did before screening.
    """
    try:
        check_headers(read_series(paths), limits)   # pixel data stays in the files
    except SeriesRejected as exc:
        return exc
    except Exception:  # not the sender's fault: the worker decides and records it
        log.exception("could not screen a series before queueing it; queueing it unscreened")
    return None
