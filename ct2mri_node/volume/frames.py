"""One record per 2D CT frame, from single-frame CT or multi-frame (Enhanced / Legacy) CT.

Assembly works on these records, so that sorting and geometry checks do not care whether a
slice came from a CT Image Storage file or from a frame of an Enhanced CT object.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    LegacyConvertedEnhancedCTImageStorage,
    RLELossless,
)

from ..errors import SeriesRejected

log = logging.getLogger(__name__)

#: The SOP classes a CT volume is made from.
CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage,
                            LegacyConvertedEnhancedCTImageStorage})
MULTI_FRAME_CT = frozenset({EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})

_LOSSLESS_SYNTAXES = frozenset({
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian, RLELossless, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless, HTJ2KLosslessRPCL,
})

_PIXEL_DATA = Tag(0x7FE00010)

#: LossyImageCompressionMethod defined terms per lossy transfer syntax family.
_LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}


@dataclass
class Frame:
    """One 2D CT frame: its geometry, its rescale and where to get its pixels."""

    ds: Dataset
    frame_number: int | None          # 1-based, for multi-frame objects
    position: np.ndarray              # ImagePositionPatient (3,)
    orientation: tuple[float, ...]    # ImageOrientationPatient (6)
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    localizer: bool


def _floats(value: Any, count: int, what: str, ds: Dataset) -> tuple[float, ...]:
    """``value`` as ``count`` floats, or a SeriesRejected naming the attribute and instance."""
    try:
        numbers = tuple(float(v) for v in (value if count > 1 else [value]))
    except (TypeError, ValueError) as exc:
        raise SeriesRejected(
            f"instance {ds.get('SOPInstanceUID', '?')} has an unreadable {what} ({value!r})",
            "invalid_geometry",
        ) from exc
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise SeriesRejected(
            f"instance {ds.get('SOPInstanceUID', '?')} has {what} {value!r}; expected {count} "
            "finite numbers", "invalid_geometry",
        )
    return numbers


def _required(item: Dataset | None, keyword: str, ds: Dataset) -> Any:
    """``item.keyword`` or a SeriesRejected saying which attribute is missing."""
    value = None if item is None else item.get(keyword)
    if value is None or value == "":
        raise SeriesRejected(
            f"instance {ds.get('SOPInstanceUID', '?')} lacks {keyword}; the CT cannot be placed "
            "in space. Send the series with its image plane attributes", "missing_geometry",
        )
    return value


def single_frame(ds: Dataset) -> Frame:
    """The one frame of a CT Image Storage instance."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return Frame(
        ds=ds,
        frame_number=None,
        position=np.array(_floats(_required(ds, "ImagePositionPatient", ds), 3,
                                  "ImagePositionPatient", ds)),
        orientation=_floats(_required(ds, "ImageOrientationPatient", ds), 6,
                            "ImageOrientationPatient", ds),
        pixel_spacing=_floats(_required(ds, "PixelSpacing", ds), 2, "PixelSpacing", ds),  # type: ignore[arg-type]
        rows=int(_required(ds, "Rows", ds)),
        columns=int(_required(ds, "Columns", ds)),
        slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        localizer="LOCALIZER" in image_type,
    )


def _group(ds: Dataset, per_frame: Dataset | None, keyword: str) -> Dataset | None:
    """First item of functional group ``keyword``: per-frame first, then shared."""
    for source in (per_frame, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if source is not None and keyword in source:
            return _first(source.get(keyword))
    return None


def _first(sequence: Any) -> Dataset | None:
    return sequence[0] if sequence else None


def multi_frame(ds: Dataset) -> list[Frame]:
    """One Frame per frame of an Enhanced or Legacy Converted Enhanced CT instance."""
    count = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != count:
        raise SeriesRejected(
            f"multi-frame CT {ds.get('SOPInstanceUID', '?')} has {count} frames but "
            f"{len(per_frame)} per-frame functional groups; the object is malformed",
            "invalid_geometry",
        )
    frames = []
    for index in range(count):
        item = per_frame[index]
        plane = _group(ds, item, "PlanePositionSequence")
        orient = _group(ds, item, "PlaneOrientationSequence")
        measures = _group(ds, item, "PixelMeasuresSequence")
        rescale = _group(ds, item, "PixelValueTransformationSequence")
        frame_type = _group(ds, item, "CTImageFrameTypeSequence")
        types = [str(v).upper() for v in ((frame_type or Dataset()).get("FrameType") or [])]
        frames.append(Frame(
            ds=ds,
            frame_number=index + 1,
            position=np.array(_floats(_required(plane, "ImagePositionPatient", ds), 3,
                                      "ImagePositionPatient", ds)),
            orientation=_floats(_required(orient, "ImageOrientationPatient", ds), 6,
                                "ImageOrientationPatient", ds),
            pixel_spacing=_floats(_required(measures, "PixelSpacing", ds), 2,  # type: ignore[arg-type]
                                  "PixelSpacing", ds),
            rows=int(_required(ds, "Rows", ds)),
            columns=int(_required(ds, "Columns", ds)),
            slope=float((rescale or Dataset()).get("RescaleSlope", 1.0) or 1.0),
            intercept=float((rescale or Dataset()).get("RescaleIntercept", 0.0) or 0.0),
            localizer="LOCALIZER" in types,
        ))
    return frames


def frames_of(ds: Dataset) -> list[Frame]:
    """The frames of one CT instance (single- or multi-frame)."""
    if UID(ds.get("SOPClassUID", "")) in MULTI_FRAME_CT:
        return multi_frame(ds)
    return [single_frame(ds)]


def transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    value = None if meta is None else meta.get("TransferSyntaxUID")
    return None if value is None else UID(value)


def lossy_method(ds: Dataset) -> str | None:
    """The lossy compression method of ``ds`` (from its attributes or its syntax), else None."""
    if str(ds.get("LossyImageCompression", "")) == "01":
        methods = ds.get("LossyImageCompressionMethod")
        if isinstance(methods, str):
            return methods or "UNKNOWN"
        return "\\".join(str(m) for m in methods) if methods else "UNKNOWN"
    syntax = transfer_syntax(ds)
    if syntax is not None and syntax not in _LOSSLESS_SYNTAXES:
        return _LOSSY_METHODS.get(str(syntax), "UNKNOWN")
    return None


#: The range of an int16 HU volume.
INT16_RANGE = (-32768, 32767)
#: Largest integer slope and intercept taken on the exact integer path (int64 never overflows).
_MAX_INT_SLOPE = 2**16
_MAX_INT_INTERCEPT = 2**31


def integer_rescale(frame: Frame) -> bool:
    """True when the frame's slope and intercept are integers, so its HU are exact integers."""
    slope, intercept = frame.slope, frame.intercept
    return (float(slope).is_integer() and float(intercept).is_integer()
            and abs(slope) <= _MAX_INT_SLOPE and abs(intercept) <= _MAX_INT_INTERCEPT)


def _work_dtype(stored: np.ndarray, frame: Frame) -> np.dtype:
    """int32 when stored * slope + intercept cannot overflow it (any value of the dtype), else int64."""
    info = np.iinfo(stored.dtype)
    largest = max(abs(info.min), info.max) * abs(frame.slope) + abs(frame.intercept)
    return np.dtype(np.int32) if largest < 2**31 else np.dtype(np.int64)


def _exact_hu(stored: np.ndarray, frame: Frame) -> np.ndarray:
    """stored * slope + intercept in integers (integer rescale only), without overflow."""
    values = stored.astype(_work_dtype(stored, frame))
    if frame.slope != 1.0:
        values *= int(frame.slope)
    if frame.intercept != 0.0:
        values += int(frame.intercept)
    return values


class PixelCache:
    """Decodes pixels for assembly without keeping them on the datasets.

    Single-frame pixels are decoded per call and not kept; a multi-frame object is decoded
    once and kept until assembly ends (it serves many frames). Pixels that
    :func:`~ct2mri_node.volume.assemble.read_series` left in the file are decoded from the file,
    so the datasets stay pixel-free and memory holds one slice at a time.
    """

    def __init__(self) -> None:
        self._arrays: dict[int, np.ndarray] = {}
        self._digests: dict[tuple[int, int | None], str] = {}

    def digest(self, frame: Frame) -> str:
        """The :func:`pixel_digest` of a frame this cache has decoded (KeyError otherwise)."""
        return self._digests[(id(frame.ds), frame.frame_number)]

    def hu_into(self, frame: Frame, out: np.ndarray) -> None:
        """Write the frame's pixels in HU (float32, rows x columns) into ``out``."""
        stored = self.stored(frame)
        # the same float32 operations as stored.astype(float32) * slope + intercept
        np.multiply(stored, np.float32(frame.slope), out=out, dtype=np.float32)
        out += np.float32(frame.intercept)

    def hu_exact(self, frame: Frame) -> np.ndarray:
        """The frame's HU as exact integers (rows x columns); only for :func:`integer_rescale`.

        int32 when no value can overflow it, else int64; one slice, so small. The caller
        checks the range and casts it into the volume.
        """
        return _exact_hu(self._integer_stored(frame), frame)

    def _integer_stored(self, frame: Frame) -> np.ndarray:
        stored = self.stored(frame)
        if stored.dtype.kind not in "iu":
            raise SeriesRejected(
                f"instance {frame.ds.get('SOPInstanceUID', '?')} decodes to {stored.dtype} "
                "pixels; CT pixel data must be integers", "invalid_pixels",
            )
        return stored

    def stored(self, frame: Frame) -> np.ndarray:
        """The frame's stored values (rows x columns), checked against its declared size."""
        stored = self._stored(frame)
        if stored.shape != (frame.rows, frame.columns):
            raise SeriesRejected(
                f"instance {frame.ds.get('SOPInstanceUID', '?')} decodes to {stored.shape} pixels "
                f"but declares {frame.rows}x{frame.columns}", "invalid_pixels",
            )
        self._digests[(id(frame.ds), frame.frame_number)] = pixel_digest(stored, frame)
        return stored

    def _stored(self, frame: Frame) -> np.ndarray:
        if frame.frame_number is None:
            return self._decode(frame.ds)
        key = id(frame.ds)
        if key not in self._arrays:
            self._arrays[key] = self._decode(frame.ds)
        array = self._arrays[key]
        if array.ndim == 2:  # a one-frame multi-frame object
            array = array[None]
        return array[frame.frame_number - 1]

    @staticmethod
    def _decode(ds: Dataset) -> np.ndarray:
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise SeriesRejected(
                f"instance {ds.get('SOPInstanceUID', '?')} is not greyscale "
                f"(SamplesPerPixel {ds.SamplesPerPixel}); CT must be MONOCHROME",
                "invalid_pixels",
            )
        try:
            return np.asarray(pixel_array(_pixel_source(ds)))
        except SeriesRejected:
            raise
        except Exception as exc:  # decoders raise many types; report them as one refusal
            syntax = transfer_syntax(ds)
            name = syntax.name if syntax is not None else "unknown transfer syntax"
            raise SeriesRejected(
                f"cannot decode the pixels of instance {ds.get('SOPInstanceUID', '?')} "
                f"({name}): {exc}. Send the series uncompressed or in a lossless syntax the "
                "node accepts (see docs/conformance-statement.md)", "undecodable_pixels",
            ) from exc


def pixel_digest(stored: np.ndarray, frame: Frame) -> str:
    """SHA-256 hex of one frame's HU as the translator gets them: its decoded stored values
    (little-endian, with dtype and shape) and its rescale slope and intercept.

    Decoded values rather than the PixelData bytes as stored: the same pixels re-sent in
    another transfer syntax give the same digest, and a changed RescaleIntercept (same bytes,
    other HU) does not. Computed where assembly decodes the frame anyway, so it costs one
    hash pass (0.4 ms for a 512x512 slice measured), not another read.
    """
    values = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<"))
    digest = hashlib.sha256(
        f"{values.dtype.str}|{values.shape}|{frame.slope!r}|{frame.intercept!r}|".encode("ascii"))
    digest.update(memoryview(values).cast("B"))
    return digest.hexdigest()


def pixels_deferred(ds: Dataset) -> bool:
    """True when ``ds``'s pixel data was left in its file (read with a defer size)."""
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    return isinstance(element, RawDataElement) and element.value is None


def _pixel_source(ds: Dataset) -> Dataset | str:
    """Where to decode from: the file for deferred pixels (nothing cached), else the dataset."""
    if not pixels_deferred(ds):
        return ds
    path = ds.filename
    if not isinstance(path, str):
        raise SeriesRejected(
            f"instance {ds.get('SOPInstanceUID', '?')}: its pixels were left in a file that "
            "is not named; read it again without deferring", "undecodable_pixels",
        )
    if ds.timestamp is not None and os.stat(path).st_mtime != ds.timestamp:
        raise SeriesRejected(
            f"instance {ds.get('SOPInstanceUID', '?')}: {Path(path).name} changed after its "
            "header was read; assemble the series again", "undecodable_pixels",
        )
    return path
