"""Broken CT files (unknown VR, unparsable value, truncated pixels) are refusals with a reason
code, never an exception that escapes assembly."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.errors import SeriesRejected
from ct2mri_node.training.ct_dicom import write_ct_series
from ct2mri_node.volume.assemble import assemble, read_series


def _patch(path: Path, tag: tuple[int, int], vr: bytes, new_vr: bytes | None = None, fill: bytes | None = None) -> None:
    """Overwrite the VR or the value of the first ``tag`` element (Explicit VR LE) in place."""
    data = bytearray(path.read_bytes())
    at = data.index(struct.pack("<HH", *tag) + vr)
    if new_vr is not None:
        data[at + 4:at + 6] = new_vr
    if fill is not None:
        length = struct.unpack_from("<H", data, at + 6)[0]
        data[at + 8:at + 8 + length] = fill * length
    path.write_bytes(bytes(data))


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    hu = np.full((8, 16, 16), 40.0, dtype=np.float32)
    return write_ct_series(hu, (2.0, 1.0, 1.0), tmp_path)


@pytest.mark.parametrize(("breakage", "reason", "words"), [
    ("unknown_vr", "invalid_series", "Unknown Value Representation 'QQ'"),
    ("bad_number", "invalid_series", "malformed header"),
    ("truncated_pixels", "undecodable_pixels", "cannot decode the pixels"),
])
def test_broken_instance_is_a_refusal(series: list[Path], breakage: str, reason: str, words: str) -> None:
    target = series[3]
    if breakage == "unknown_vr":
        _patch(target, (0x0008, 0x0060), b"CS", new_vr=b"QQ")
    elif breakage == "bad_number":
        _patch(target, (0x0018, 0x0050), b"DS", fill=b"z")      # SliceThickness, not used by geometry
    else:
        target.write_bytes(target.read_bytes()[:-64])
    with pytest.raises(SeriesRejected, match=words) as info:
        assemble(read_series(series))
    assert info.value.reason == reason
