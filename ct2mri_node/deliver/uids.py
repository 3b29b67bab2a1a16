"""Deterministic DICOM UIDs: ``2.25.`` + a UUIDv5 read as an integer.

Re-running the same job (same CT instances, same weights, same pixel-changing settings) must
give the same series and instance UIDs, so that a PACS sees a resent series as the same objects
and never stores a second copy. No clock, host name or random number enters a UID.
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


def instances_digest(sop_instance_uids: Iterable[str]) -> str:
    """SHA-256 hex of the sorted source SOP Instance UIDs (order of arrival must not matter)."""
    digest = hashlib.sha256()
    for uid in sorted(sop_instance_uids):
        digest.update(uid.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class OutputUids:
    """The UIDs of one synthetic MR series: the series and one instance per slice."""

    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]


def derive_output_uids(
    source_series_uid: str,
    source_sop_instance_uids: Sequence[str],
    weight_hash: str,
    pixel_settings: Sequence[object],
) -> OutputUids:
    """Derive the MR series UID and per-slice instance UIDs of one translation job.

    ``source_sop_instance_uids`` are in output slice order: instance ``i`` of the MR series
    is derived from the series key and the CT instance at slice ``i``. ``pixel_settings`` are
    the settings that change the pixels (steps, seed, sampler, ...), in a fixed order.
    """
    key = (
        source_series_uid,
        instances_digest(source_sop_instance_uids),
        weight_hash,
        *(str(s) for s in pixel_settings),
    )
    series_uid = uid_from("series", *key)
    instance_uids = tuple(
        uid_from("instance", series_uid, index, source_uid)
        for index, source_uid in enumerate(source_sop_instance_uids)
    )
    return OutputUids(series_instance_uid=series_uid, sop_instance_uids=instance_uids)
