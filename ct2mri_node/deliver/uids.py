"""Deterministic DICOM UIDs: ``2.25.`` + a UUIDv5 read as an integer.

A UID stands for one set of pixels, always. The MR series and instance UIDs are derived from
everything that determines the MR's pixels: the source series UID, each source slice (its
SOP Instance UID, frame and a digest of its decoded pixels and rescale), the grid, the model's
weight hash, the settings that change pixels, the software version and the numerical
precision. So re-running the same job gives the same UIDs (a PACS sees a resent series as the
same objects and never stores a second copy), and a CT re-sent under its old UIDs with other
pixels, another model, version or precision gives new ones. No clock, host name or random
number enters a UID. docs/conformance-statement.md says where the pixels are reproducible.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Namespace of every UUIDv5 that ct2mri-node derives (itself a UUIDv5 of the project's URL).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/ct2mri-node/ct2mri-node/uids")

#: A valid UID: dot-separated numeric components without leading zeros, at most 64 chars.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def uid_from(*parts: object) -> str:
    """Return ``2.25.<int>`` from a UUIDv5 of ``parts`` (joined unambiguously)."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    return f"2.25.{uuid.uuid5(NAMESPACE, text).int}"


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID (safe to use in a file name)."""
    return len(value) <= 64 and bool(_UID_RE.match(value))


@dataclass(frozen=True)
class SourceKey:
    """One source slice as it enters the UIDs: the CT instance (and frame) and its pixels."""

    instance: str        # SOP Instance UID, ``#<frame>`` appended for a frame of a multi-frame CT
    pixel_digest: str    # sha256 hex of the slice's decoded pixels and rescale
    position: tuple[float, float, float]   # ImagePositionPatient

    def text(self) -> str:
        """The slice as one unambiguous line (no field can hold a newline or a ``|``)."""
        return f"{self.instance}|{self.pixel_digest}|{','.join(repr(float(v)) for v in self.position)}"


def sources_digest(sources: Iterable[SourceKey]) -> str:
    """SHA-256 hex of the source slices, sorted (the order of arrival must not matter)."""
    digest = hashlib.sha256()
    for line in sorted(source.text() for source in sources):
        digest.update(line.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class OutputUids:
    """The UIDs of one synthetic MR series: the series and one instance per slice."""

    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]


def derive_output_uids(
    source_series_uid: str,
    sources: Sequence[SourceKey],
    weight_hash: str,
    pixel_settings: Sequence[object],
    *,
    software_version: str,
    precision: str,
) -> OutputUids:
    """Derive the MR series UID and per-slice instance UIDs of one translation job.

    ``sources`` are in output slice order: instance ``i`` of the MR series is derived from the
    series UID and source slice ``i``. ``pixel_settings`` are the settings (and grid) that
    change the pixels, in a fixed order. ``precision`` names the network's arithmetic ("fp32",
    "bf16", "fp16", optionally with the device class). The series UID covers every input, so a
    change to any one slice changes the series UID and with it every instance UID.
    """
    if not sources:
        raise ValueError("an MR series needs at least one source slice")
    key = (
        source_series_uid,
        sources_digest(sources),
        weight_hash,
        *(str(s) for s in pixel_settings),
        f"version={software_version}",
        f"precision={precision}",
    )
    series_uid = uid_from("series", *key)
    instance_uids = tuple(
        uid_from("instance", series_uid, index, source.text())
        for index, source in enumerate(sources)
    )
    return OutputUids(series_instance_uid=series_uid, sop_instance_uids=instance_uids)
