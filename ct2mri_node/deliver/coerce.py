"""Per-destination attribute coercion, applied to what is sent and never to what is spooled.

A destination's ``coerce: {Keyword: value}`` (validated at config load, ``config._check_coercion``)
sets each attribute to its value, or removes it when the value is None, on the copy of each
instance that goes to that destination: the written series, its UIDs and pixel data stay as they
are, so other destinations and later attempts see the node's own output. This is what PACS call
attribute coercion (dcm4chee-arc's ``dcmArchiveAttributeCoercion``) for receivers with quirks,
e.g. a planning system that calls ``float()`` on an empty RepetitionTime.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset


def coerce_dataset(ds: Dataset, rules: Mapping[str, Any]) -> Dataset:
    """Apply ``rules`` to ``ds`` in place (top-level attributes) and return it."""
    for keyword, value in rules.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def read_coerced(path: Path, rules: Mapping[str, Any]) -> Dataset:
    """The instance at ``path`` with ``rules`` applied (the file itself is not changed)."""
    return coerce_dataset(pydicom.dcmread(path), rules)


def coerced_bytes(path: Path, rules: Mapping[str, Any]) -> bytes:
    """The file at ``path`` as bytes, re-encoded with ``rules`` applied; its own bytes when there are none."""
    if not rules:
        return path.read_bytes()
    ds = read_coerced(path, rules)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
