"""A seeded mutator of CT instances: truncations, wrong lengths, bad VRs, flipped bytes, missing
pixel data, wrong modality or SOP class, absurd dimensions, UIDs crafted as paths, junk."""

from __future__ import annotations

import copy
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from relkit import dataset_bytes, file_meta_bytes

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

KINDS = ("truncate", "length", "vr", "flip", "no_pixels", "modality", "sop_class", "dimensions",
         "path_uid", "junk", "bits")


@dataclass(frozen=True)
class Broken:
    """One broken object: what was done to it and the file bytes to send."""

    kind: str
    data: bytes


def element_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, header size) of each top-level element of an Explicit VR Little Endian data set."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            length, header = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        out.append((pos, header))
        if length == 0xFFFFFFFF:
            break   # undefined length: stop walking
        pos += header + length
    return out


class Mutator:
    """Makes broken objects from valid datasets, reproducibly from ``seed``."""

    def __init__(self, bases: list[pydicom.Dataset], seed: int) -> None:
        self.bases = bases
        self.encoded = [dataset_bytes(ds) for ds in bases]
        self.rng = random.Random(seed)
        self.count = 0

    def __iter__(self) -> Iterator[Broken]:
        while True:
            yield self.next()

    def next(self) -> Broken:
        self.count += 1
        i = self.rng.randrange(len(self.bases))
        kind = self.rng.choice(KINDS)
        body = getattr(self, f"_{kind}")(self.bases[i], self.encoded[i])
        sop = str(self.bases[i].SOPClassUID)
        return Broken(kind, file_meta_bytes(sop, f"1.2.826.0.1.3680043.10.99.{self.count}") + body)

    # -- byte-level -------------------------------------------------------------------
    def _truncate(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        return data[: self.rng.randrange(len(data))]

    def _flip(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 16)):
            out[self.rng.randrange(len(out))] = self.rng.randrange(256)
        return bytes(out)

    def _length(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        out = bytearray(data)
        pos, header = self.rng.choice(element_offsets(data))
        value = self.rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, self.rng.randrange(2**32)])
        if header == 12:
            struct.pack_into("<I", out, pos + 8, value)
        else:
            struct.pack_into("<H", out, pos + 6, value & 0xFFFF)
        return bytes(out)

    def _vr(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        out = bytearray(data)
        pos, _ = self.rng.choice(element_offsets(data))
        out[pos + 4:pos + 6] = bytes(self.rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ\x00\xff") for _ in range(2))
        return bytes(out)

    def _junk(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        return self.rng.randbytes(self.rng.randrange(0, 2048))

    # -- value-level ------------------------------------------------------------------
    def _changed(self, ds: pydicom.Dataset, **values: object) -> bytes:
        out = copy.deepcopy(ds)
        with pydicom.config.disable_value_validation():
            for keyword, value in values.items():
                if value is None:
                    delattr(out, keyword)
                else:
                    setattr(out, keyword, value)
        return dataset_bytes(out)

    def _no_pixels(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        return self._changed(ds, PixelData=None)

    def _modality(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        return self._changed(ds, Modality=self.rng.choice(["MR", "", "XX"]))

    def _sop_class(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        return self._changed(ds, SOPClassUID=self.rng.choice(["1.2.840.10008.5.1.4.1.1.4", "1.2.3", ""]))

    def _dimensions(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        size = self.rng.choice([0, 1, 65535])
        return self._changed(ds, Rows=size, Columns=self.rng.choice([0, 65535, int(ds.Columns)]))

    def _bits(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        return self._changed(ds, BitsAllocated=self.rng.choice([0, 7, 64]), BitsStored=99)

    def _path_uid(self, ds: pydicom.Dataset, data: bytes) -> bytes:
        keyword = self.rng.choice(["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
        return self._changed(ds, **{keyword: self.rng.choice(["../../x", "a/b", "1." + "9" * 80, "1.2.x"])})
