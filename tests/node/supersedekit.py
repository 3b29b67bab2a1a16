"""Helpers for the superseded-job tests (issue 21 part 2): a CT series changed under its own
UIDs, the MR series a capture SCP received, and a destination that is down until started."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
from nodekit import CaptureSCP

#: MR Image Storage: the synthetic MR (companions have their own SOP classes and series).
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def changed_series(ct: list[Path], out_dir: Path, index: int = 5, delta: int = 50) -> list[Path]:
    """The series ``ct`` with instance ``index`` replaced by a file of the same UIDs and other
    pixels (``delta`` HU more in a patch of the body): a modality that re-sends a corrected slice."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = pydicom.dcmread(ct[index])
    pixels = changed.pixel_array.copy()
    pixels[10:20, 10:20] += delta
    changed.PixelData = pixels.tobytes()
    path = out_dir / ct[index].name
    changed.save_as(path, enforce_file_format=True)
    return [path if i == index else p for i, p in enumerate(ct)]


def mr_series(capture: CaptureSCP) -> dict[str, set[str]]:
    """{MR SeriesInstanceUID: its SOP Instance UIDs} as received by ``capture``."""
    with capture.lock:
        received = [d for d in capture.datasets if str(d.SOPClassUID) == MR_STORAGE]
    series: dict[str, set[str]] = {}
    for ds in received:
        series.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
    return series


def deliveries_per_instance(capture: CaptureSCP) -> set[int]:
    """How many times each MR instance was stored at ``capture`` ({1}: each exactly once)."""
    with capture.lock:
        counts = Counter(str(d.SOPInstanceUID) for d in capture.datasets if str(d.SOPClassUID) == MR_STORAGE)
    return set(counts.values())


def down_destination(ae_title: str = "LATER") -> CaptureSCP:
    """A destination whose port is reserved but nobody listens on it until ``start()``."""
    return CaptureSCP(ae_title=ae_title)


#: Worker settings that keep retrying a down destination through a whole test.
PATIENT_WORKER: dict[str, Any] = {"max_attempts": 10_000, "backoff_initial_s": 0.2, "backoff_max_s": 0.5,
                                  "poll_interval_s": 0.1}
