"""CT datasets -> one volume in HU on the CT's own grid, or a refusal a PACS admin can act on.

Slices are sorted by their distance along the slice normal (the cross product of the
orientation's row and column vectors), never by InstanceNumber or file name. Every geometric
assumption the encoder relies on (one orientation, evenly spaced positions along the normal,
no gaps, no duplicates, no tilt, one pixel grid) is checked here, so that the synthetic MR can
be written on exactly the CT's grid and share its frame of reference.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from ..errors import SeriesRejected
from .frames import (
    CT_SOP_CLASSES,
    INT16_RANGE,
    Frame,
    PixelCache,
    frames_of,
    integer_rescale,
    lossy_method,
    transfer_syntax,
)

log = logging.getLogger(__name__)

#: Elements left out of CTVolume.header: pixels and per-frame geometry (large, slice-specific).
_HEADER_EXCLUDE = frozenset(
    Tag(t) for t in (0x7FE00010, 0x7FE00008, 0x7FE00009, 0x52009230)
)
#: Pixel elements: decoded by assembly, slice by slice, not by the header check.
_PIXEL_TAGS = frozenset(Tag(t) for t in (0x7FE00010, 0x7FE00008, 0x7FE00009))


@dataclass(frozen=True)
class VolumeLimits:
    """What the node accepts as a CT volume (defaults suit the model's patch size)."""

    min_slices: int = 8
    max_slices: int = 2000
    max_rows: int = 1024
    max_columns: int = 1024
    spacing_rtol: float = 0.01          # unevenness allowed, relative to the median spacing
    spacing_atol_mm: float = 0.01       # ... and absolute (DS rounding)
    orientation_atol: float = 1e-4      # per direction-cosine component
    max_tilt_deg: float = 0.1           # positions must run along the normal
    max_localizer_images: int = 3       # off-orientation images dropped as localizers


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of the volume came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    position: tuple[float, float, float]
    pixel_digest: str   # sha256 of the slice's decoded pixels and rescale (frames.pixel_digest)


@dataclass
class CTVolume:
    """A CT volume in HU, slices ascending along the normal, with the geometry to put it back.

    ``hu`` is (slice, row, column) and exact: int16 when every slice has an integer
    RescaleSlope and RescaleIntercept and all HU fit int16 (the common case, e.g. slope 1,
    intercept -1024), otherwise float32 (a non-integer rescale, or values beyond int16).
    Consumers must accept both; ``translator.translate`` does.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    orientation: tuple[float, ...]
    slices: list[SliceSource]
    header: Dataset
    frame_of_reference_uid: str
    lossy: bool
    notes: list[str] = field(default_factory=list)
    lossy_methods: tuple[str, ...] = ()   # LossyImageCompressionMethod values of the sources

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)


#: Elements larger than this stay in their file until assembly decodes them (pixel data).
DEFER_SIZE_BYTES = 64 * 1024


def read_series(paths: Iterable[Path], *,
                defer_size_bytes: int | None = DEFER_SIZE_BYTES) -> list[Dataset]:
    """Read the DICOM files among ``paths``; files that are not DICOM are skipped with a log line.

    Pixel data (and any other element over ``defer_size_bytes``) is left in the file: the
    datasets hold headers only, and :func:`assemble` decodes each slice straight into the
    volume. Reading ``ds.PixelData`` still works (pydicom reads it from the file on access).
    ``defer_size_bytes=None`` reads everything into memory.
    """
    datasets = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            ds = _read(path, defer_size_bytes)
        except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
            log.info("skipping %s: not a readable DICOM file (%s)", path.name, exc)
            continue
        if "PixelData" not in ds and "SOPClassUID" not in ds:
            log.info("skipping %s: DICOM file without an image (e.g. DICOMDIR)", path.name)
            continue
        datasets.append(ds)
    log.debug("read %d DICOM datasets", len(datasets))
    return datasets


def _read(path: Path, defer_size_bytes: int | None) -> Dataset:
    """One file with its large elements deferred; a deflated file (offsets into the inflated
    stream cannot be read back from the file) is read whole."""
    ds = pydicom.dcmread(path, defer_size=defer_size_bytes)
    if defer_size_bytes is not None and transfer_syntax(ds) == DeflatedExplicitVRLittleEndian:
        ds = pydicom.dcmread(path)
    return ds


@dataclass
class SeriesGeometry:
    """What the header checks found: the frames in order along the normal, and their grid."""

    images: list[Dataset]
    frames: list[Frame]                 # ascending along the slice normal, localizers left out
    orientation: tuple[float, ...]
    slice_spacing: float
    frame_of_reference_uid: str
    notes: list[str]


def check_headers(datasets: Sequence[Dataset], limits: VolumeLimits = VolumeLimits()) -> SeriesGeometry:
    """Every check of :func:`assemble` that reads headers only (modality and SOP class, geometry
    present and sane, slice count and size limits, spacing, tilt), or SeriesRejected.

    No pixel is decoded, so it costs milliseconds: the node runs it when a series completes,
    before the series takes a place in the translation queue (``receive/screen.py``).
    """
    notes: list[str] = []
    for ds in datasets:
        _check_decodable(ds)
    images = _ct_images(datasets, notes)
    frames = _usable_frames(images, notes)
    orientation = _common_orientation(frames, limits, notes)
    frames = [f for f in frames if _same_orientation(f.orientation, orientation, limits)]
    _check_grid(frames, limits)
    normal = _normal(orientation)
    frames.sort(key=lambda f: float(np.dot(f.position, normal)))
    slice_spacing = _check_positions(frames, normal, limits)
    frame_uid = str(frames[0].ds.get("FrameOfReferenceUID", "") or "")
    if not frame_uid:
        raise SeriesRejected(
            "the CT has no FrameOfReferenceUID, so the synthetic MR could not share its frame "
            "of reference; the scanner's export is incomplete", "missing_geometry",
        )
    return SeriesGeometry(images, frames, orientation, slice_spacing, frame_uid, notes)


def assemble(datasets: Sequence[Dataset], limits: VolumeLimits = VolumeLimits()) -> CTVolume:
    """Make one CT volume from the datasets of one series, or raise SeriesRejected."""
    geometry = check_headers(datasets, limits)
    images, frames, orientation = geometry.images, geometry.frames, geometry.orientation
    slice_spacing, frame_uid, notes = geometry.slice_spacing, geometry.frame_of_reference_uid, geometry.notes
    first = frames[0]
    cache = PixelCache()
    hu = _pixels(frames, cache)
    methods = sorted({m for m in (lossy_method(ds) for ds in images) if m})
    volume = CTVolume(
        hu=hu,
        spacing=(slice_spacing, first.pixel_spacing[0], first.pixel_spacing[1]),
        orientation=orientation,
        slices=[_source(f, cache.digest(f)) for f in frames],
        header=_header(first.ds),
        frame_of_reference_uid=frame_uid,
        lossy=bool(methods),
        notes=notes,
        lossy_methods=tuple(methods),
    )
    for note in notes:
        log.info("series %s: %s", volume.series_instance_uid, note)
    return volume


def _check_decodable(ds: Dataset) -> None:
    """Refuse an instance whose header pydicom cannot decode (unknown VR, broken value).

    Every standard element is decoded once here (pixel data stays in its file), so the
    geometry checks and the encoder only see values that decode. Private elements are not
    checked: the MR series copies none of them.
    """
    try:
        _decode_elements(ds)
    except SeriesRejected:
        raise
    except Exception as exc:  # noqa: BLE001 (pydicom raises many types on broken values)
        raise SeriesRejected(
            f"{_name(ds)} of the series has a malformed header: an element cannot be decoded "
            f"({str(exc)[:200]}). Resend the series from the scanner or PACS, or fix its export",
            "invalid_series",
        ) from exc


def _decode_elements(ds: Dataset) -> None:
    """Decode every standard non-pixel element of ``ds`` and of its sequence items."""
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAGS or tag.is_private:
            continue
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _decode_elements(item)


def _name(ds: Dataset) -> str:
    """The file name of ``ds`` when it came from a file, else its SOP Instance UID."""
    if isinstance(ds.filename, str):
        return Path(ds.filename).name
    return f"instance {ds.get('SOPInstanceUID', '?')}"


def _ct_images(datasets: Sequence[Dataset], notes: list[str]) -> list[Dataset]:
    """The CT image instances of one series; refuses mixed series and non-CT modalities."""
    if not datasets:
        raise SeriesRejected("no DICOM instances were given; send a CT series", "empty_series")
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for ds in datasets)
    if len(series) > 1:
        raise SeriesRejected(
            f"the input holds {len(series)} series ({', '.join(_series_summary(datasets))}); "
            "give one CT series at a time", "mixed_series",
        )
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if modalities != ["CT"]:
        raise SeriesRejected(
            f"the series has modality {'/'.join(m or '(none)' for m in modalities)}, not CT; "
            "only CT series can be translated to synthetic MR", "not_ct",
        )
    images = []
    for ds in datasets:
        if str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES and "PixelData" in ds:
            images.append(ds)
        else:
            notes.append(f"left out instance {ds.get('SOPInstanceUID', '?')}: SOP class "
                         f"{ds.get('SOPClassUID', '?')} is not a CT image")
    if not images:
        raise SeriesRejected(
            "the series holds no CT Image Storage, Enhanced CT or Legacy Converted Enhanced CT "
            "image", "not_ct",
        )
    return images


def _series_summary(datasets: Sequence[Dataset]) -> list[str]:
    counts = Counter(
        (str(ds.get("SeriesNumber", "?")), str(ds.get("Modality", "?"))) for ds in datasets
    )
    return [f"series number {n} {m}: {c} instances" for (n, m), c in sorted(counts.items())]


def _usable_frames(images: Sequence[Dataset], notes: list[str]) -> list[Frame]:
    """All frames of the images, localizers left out with a note."""
    frames = []
    for ds in images:
        for frame in _frames_or_refusal(ds):
            if frame.localizer:
                notes.append(f"left out localizer image {ds.get('SOPInstanceUID', '?')}")
                continue
            frames.append(frame)
    if not frames:
        raise SeriesRejected("the series holds only localizer images", "too_few_slices")
    return frames


def _frames_or_refusal(ds: Dataset) -> list[Frame]:
    """The frames of ``ds``; a header pydicom cannot parse (e.g. an unknown VR) is a refusal."""
    try:
        return frames_of(ds)
    except (NotImplementedError, ValueError, TypeError, KeyError, AttributeError) as exc:
        name = Path(ds.filename).name if isinstance(ds.filename, str) else "an instance"
        raise SeriesRejected(
            f"{name} of the series has a malformed header ({exc}); the CT cannot be read. "
            "Resend the series from the scanner or PACS", "invalid_series",
        ) from exc


def _same_orientation(a: Sequence[float], b: Sequence[float], limits: VolumeLimits) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=limits.orientation_atol))


def _common_orientation(
    frames: Sequence[Frame], limits: VolumeLimits, notes: list[str]
) -> tuple[float, ...]:
    """The majority orientation; a few off-orientation images are dropped as localizers."""
    groups: list[tuple[tuple[float, ...], list[Frame]]] = []
    for frame in frames:
        for orientation, members in groups:
            if _same_orientation(frame.orientation, orientation, limits):
                members.append(frame)
                break
        else:
            groups.append((frame.orientation, [frame]))
    groups.sort(key=lambda g: len(g[1]), reverse=True)
    majority, members = groups[0]
    others = [f for _, group in groups[1:] for f in group]
    if others and (len(others) > limits.max_localizer_images or len(others) >= len(members)):
        raise SeriesRejected(
            f"the series mixes {len(groups)} image orientations ({len(members)} images "
            f"{_fmt(majority)}, {len(others)} others); a volume needs one orientation. "
            "Send one reconstruction per series", "mixed_orientation",
        )
    for frame in others:
        notes.append(f"left out image {frame.ds.get('SOPInstanceUID', '?')}: orientation "
                     f"{_fmt(frame.orientation)} differs from the series (likely a localizer)")
    _check_orthonormal(majority)
    return tuple(float(v) for v in majority)


def _check_orthonormal(orientation: Sequence[float]) -> None:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(float(np.dot(row, col))) > 1e-3):
        raise SeriesRejected(
            f"ImageOrientationPatient {_fmt(orientation)} is not two orthogonal unit vectors; "
            "the scanner's export is malformed", "invalid_geometry",
        )


def _normal(orientation: Sequence[float]) -> np.ndarray:
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    return normal / np.linalg.norm(normal)


def _check_grid(frames: Sequence[Frame], limits: VolumeLimits) -> None:
    """One pixel grid, within the configured size limits."""
    grids = Counter((f.rows, f.columns, tuple(round(s, 4) for s in f.pixel_spacing))
                    for f in frames)
    if len(grids) > 1:
        listed = ", ".join(f"{r}x{c} at {s[0]}x{s[1]} mm ({n})" for (r, c, s), n in grids.items())
        raise SeriesRejected(
            f"the images differ in size or pixel spacing ({listed}); a volume needs one grid. "
            "Send one reconstruction per series", "mixed_grid",
        )
    first = frames[0]
    if len(frames) < limits.min_slices:
        raise SeriesRejected(
            f"the series has {len(frames)} slices; at least {limits.min_slices} are needed "
            "(series.min_slices of the node, --min-slices of translate). Send the whole series",
            "too_few_slices",
        )
    if (len(frames) > limits.max_slices or first.rows > limits.max_rows
            or first.columns > limits.max_columns):
        raise SeriesRejected(
            f"the series is {len(frames)} slices of {first.rows}x{first.columns}; the node "
            f"accepts at most {limits.max_slices} slices of {limits.max_rows}x"
            f"{limits.max_columns} (series.max_slices and series.max_matrix of the node, "
            "--max-slices and --max-matrix of translate)", "too_large",
        )
    if min(first.pixel_spacing) <= 0:
        raise SeriesRejected(f"PixelSpacing {first.pixel_spacing} is not positive",
                             "invalid_geometry")


def _check_positions(frames: Sequence[Frame], normal: np.ndarray, limits: VolumeLimits) -> float:
    """Check positions along the normal (sorted ascending); return the slice spacing in mm."""
    distances = np.array([float(np.dot(f.position, normal)) for f in frames])
    steps = np.diff(distances)
    tolerance = limits.spacing_atol_mm
    duplicates = np.flatnonzero(steps <= tolerance)
    if duplicates.size:
        i = int(duplicates[0])
        raise SeriesRejected(
            f"{duplicates.size + 1} images share positions along the slice normal (e.g. two at "
            f"{distances[i]:.2f} mm: instances {_ident(frames[i])} and {_ident(frames[i + 1])}); "
            "the series holds more than one acquisition or repeated slices. Send each "
            "acquisition as its own series", "duplicate_positions",
        )
    spacing = float(np.median(steps))
    tolerance = max(limits.spacing_atol_mm, limits.spacing_rtol * spacing)
    _check_gaps(frames, distances, steps, spacing, tolerance)
    _check_tilt(frames, normal, distances, limits)
    return spacing


def _check_gaps(frames: Sequence[Frame], distances: np.ndarray, steps: np.ndarray,
                spacing: float, tolerance: float) -> None:
    for i, step in enumerate(steps):
        if abs(step - spacing) <= tolerance:
            continue
        multiple = round(step / spacing)
        if multiple >= 2 and abs(step - multiple * spacing) <= tolerance * multiple:
            raise SeriesRejected(
                f"{multiple - 1} slice(s) missing between {distances[i]:.2f} mm and "
                f"{distances[i + 1]:.2f} mm along the slice normal (spacing {spacing:.3f} mm); "
                "the series is incomplete. Resend the whole series", "missing_slices",
            )
        raise SeriesRejected(
            f"uneven slice spacing: {step:.3f} mm between {distances[i]:.2f} and "
            f"{distances[i + 1]:.2f} mm where the series has {spacing:.3f} mm (tolerance "
            f"{tolerance:.3f} mm); send a reconstruction with constant spacing",
            "uneven_spacing",
        )


def _check_tilt(frames: Sequence[Frame], normal: np.ndarray, distances: np.ndarray,
                limits: VolumeLimits) -> None:
    """Positions must lie on a line along the normal (no gantry tilt, no shear)."""
    offsets = np.array([f.position - frames[0].position for f in frames])
    along = distances - distances[0]
    lateral = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    allowed = np.maximum(limits.spacing_atol_mm,
                         np.tan(np.radians(limits.max_tilt_deg)) * np.abs(along))
    if np.any(lateral > allowed):
        i = int(np.argmax(lateral - allowed))
        angle = float(np.degrees(np.arctan2(lateral[i], abs(along[i]))))
        raise SeriesRejected(
            f"the slice positions do not run along the slice normal (about {angle:.2f} degrees "
            "off: gantry tilt or sheared reconstruction); send an axial reconstruction "
            "without tilt", "gantry_tilt",
        )


def _pixels(frames: Sequence[Frame], cache: PixelCache) -> np.ndarray:
    """Decode every frame straight into one preallocated volume (no stacking).

    int16 when that is exact (integer slope and intercept, every value within int16): half the
    memory of float32, which the clinical common case (slope 1, intercept -1024) always meets.
    Otherwise float32 (see :class:`CTVolume`). Each slice's values are checked (a min and a max,
    ~0.1 ms a slice) rather than trusted from BitsStored: decoders do not all mask the bits
    above it, and a wrapped value would silently change the anatomy. The first slice that does
    not fit turns the volume float32. ``cache`` keeps each frame's pixel digest.
    """
    if not all(integer_rescale(f) for f in frames):
        return _float_pixels(frames, cache)
    first = frames[0]
    hu = np.empty((len(frames), first.rows, first.columns), dtype=np.int16)
    low, high = INT16_RANGE
    for k, frame in enumerate(frames):
        values = cache.hu_exact(frame)
        if not low <= int(values.min()) <= int(values.max()) <= high:
            log.info("the HU of slice %d of %d exceed int16; assembling a float32 volume",
                     k + 1, len(frames))
            return _widened(hu, k, frames, cache)
        hu[k] = values
    return hu


def _widened(hu16: np.ndarray, done: int, frames: Sequence[Frame],
             cache: PixelCache) -> np.ndarray:
    """float32 copy of the first ``done`` int16 slices, the rest decoded exactly into it.

    Integer HU convert to float32 exactly up to 2**24 in magnitude (correctly rounded beyond),
    so every slice holds its exact HU, as the float32 rescale of the stored values gives too.
    For a moment the int16 and float32 volumes coexist (3 x raw); only values beyond int16 pay it.
    """
    hu = np.empty(hu16.shape, dtype=np.float32)
    hu[:done] = hu16[:done]
    for k in range(done, len(frames)):
        hu[k] = cache.hu_exact(frames[k])
    return hu


def _float_pixels(frames: Sequence[Frame], cache: PixelCache) -> np.ndarray:
    """Decode every frame into a float32 volume (non-integer rescale), checking finiteness."""
    first = frames[0]
    hu = np.empty((len(frames), first.rows, first.columns), dtype=np.float32)
    for k, frame in enumerate(frames):
        cache.hu_into(frame, hu[k])
        if not _surely_finite(frame) and not np.isfinite(hu[k]).all():
            raise SeriesRejected("the CT pixels contain non-finite values", "invalid_pixels")
    return hu


def _surely_finite(frame: Frame) -> bool:
    """True when any stored value (up to 32 bits) rescales to a finite float32."""
    limit = abs(frame.slope) * 2.0**32 + abs(frame.intercept)
    return bool(np.isfinite(limit)) and limit < 1e30


def _source(frame: Frame, digest: str) -> SliceSource:
    return SliceSource(
        sop_class_uid=str(frame.ds.SOPClassUID),
        sop_instance_uid=str(frame.ds.SOPInstanceUID),
        frame_number=frame.frame_number,
        position=(float(frame.position[0]), float(frame.position[1]), float(frame.position[2])),
        pixel_digest=digest,
    )


def _header(ds: Dataset) -> Dataset:
    """Pixel-free copy of ``ds`` keeping raw (undecoded) elements, so text stays byte-exact."""
    header = Dataset()
    for tag in ds.keys():
        if tag in _HEADER_EXCLUDE or tag.group == 0x0002:
            continue
        header[tag] = ds.get_item(tag)
    return header


def _ident(frame: Frame) -> str:
    suffix = f" frame {frame.frame_number}" if frame.frame_number is not None else ""
    return f"{frame.ds.get('SOPInstanceUID', '?')}{suffix}"


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"

