"""The synthetic MR series: one MR Image Storage instance per CT slice, on the CT's own grid.

Implements the labelling and reference profile of ``shared/DICOM-OUTPUT.md``: patient and study
copied byte for byte with their character set, the CT's frame of reference, deterministic UIDs,
"synthetic and derived" said in every way DICOM offers, each instance referencing its own
source CT slice (so encoding stays linear in the number of slices), contributing equipment
for our node and for the scanner, no invented MR acquisition parameters and no CT-only
attributes. A pure function: values in, datasets out (no I/O, no torch).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    correct_ambiguous_vr_element,
    write_data_element,
    write_file_meta_info,
)
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage
from pydicom.valuerep import VR, PersonName, format_number_as_ds

from .. import __version__
from ..errors import ModelError
from .uids import OutputUids, SourceKey, derive_output_uids

if TYPE_CHECKING:  # deliver/ never imports the model (and torch) at run time
    from ..model.translator import TranslationResult, TranslationSettings
    from ..volume.assemble import CTVolume, SliceSource

log = logging.getLogger(__name__)

#: Study attributes copied from the CT (General Study module and its common extras).
STUDY_TAGS: tuple[int, ...] = (
    0x0020000D,  # StudyInstanceUID
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00200010,  # StudyID
    0x00080050,  # AccessionNumber
    0x00080051,  # IssuerOfAccessionNumberSequence
    0x00080090,  # ReferringPhysicianName
    0x00081030,  # StudyDescription
    0x00081048,  # PhysiciansOfRecord
    0x00081032,  # ProcedureCodeSequence
)
#: De-identification attributes that travel with the patient module.
DEIDENTIFICATION_TAGS: tuple[int, ...] = (0x00120062, 0x00120063, 0x00120064)
#: Series-level attributes copied because the grid is the CT's.
SERIES_TAGS: tuple[int, ...] = (
    0x00185100,  # PatientPosition
    0x00180015,  # BodyPartExamined
    0x00200052,  # FrameOfReferenceUID
    0x00201040,  # PositionReferenceIndicator
)
_PIXEL_DATA = Tag(0x7FE00010)
_HEAD_PARTS = frozenset({"HEAD", "BRAIN", "SKULL", "HEADNECK", "FACE"})
_CHARSET_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})

SYNTHESIZING = ("109100", "DCM", "Synthesizing Equipment")
ACQUISITION = ("109101", "DCM", "Acquisition Equipment")
SOURCE_IMAGE = ("121322", "DCM", "Source image for image processing operation")
SOURCE_SERIES = ("121323", "DCM", "Source series for image processing operation")


@dataclass(frozen=True)
class EncodeOptions:
    """How the synthetic MR series is labelled (values only; nothing here changes pixels)."""

    series_number_offset: int = 1000
    node_version: str = __version__
    manufacturer: str = "ct2mri-node"
    description_prefix: str = "SYNTHETIC MR - NOT FOR DIAGNOSIS"
    burned_in_watermark: bool = False          # True when a visible label is burned in
    contribution_datetime: dt.datetime | None = None   # None: now (UTC)

    def __post_init__(self) -> None:
        if not self.description_prefix.startswith("SYNTHETIC MR - NOT FOR DIAGNOSIS"):
            raise ValueError("description_prefix must start with 'SYNTHETIC MR - NOT FOR DIAGNOSIS'")
        if len(self.description_prefix) > 64 or not self.description_prefix.isascii():
            raise ValueError("description_prefix must be ASCII, at most 64 characters")
        if not 0 <= self.series_number_offset < 2**30:
            raise ValueError("series_number_offset must be in [0, 2**30)")


def encode_series(
    ct: CTVolume, result: TranslationResult, options: EncodeOptions = EncodeOptions()
) -> list[Dataset]:
    """One MR Image Storage dataset per CT slice, in CT slice order (InstanceNumber 1..n)."""
    mr = _checked_pixels(ct, result)
    uids = output_uids(ct, result)
    when = options.contribution_datetime or dt.datetime.now(dt.timezone.utc)
    series = _series_dataset(ct, result, options, uids.series_instance_uid, when)
    shared = list(series.elements())
    normal = _normal(ct)
    datasets = [
        _slice_dataset(shared, normal, index, source, mr[index], uids.sop_instance_uids[index],
                       ct.series_instance_uid)
        for index, source in enumerate(ct.slices)
    ]
    log.info("encoded synthetic MR series %s: %d instances from CT series %s",
             uids.series_instance_uid, len(datasets), ct.series_instance_uid)
    return datasets


def output_uids(ct: CTVolume, result: TranslationResult) -> OutputUids:
    """The MR series' UIDs from everything that determines its pixels (see ``deliver/uids.py``):
    the CT series and each slice's pixels, the grid, weights, settings, version and precision."""
    settings = (*pixel_settings(result),
                "spacing", *ct.spacing, "orientation", *ct.orientation)
    return derive_output_uids(
        ct.series_instance_uid,
        [_source_key(s) for s in ct.slices],
        result.model.weight_hash,
        settings,
        software_version=__version__,
        precision=uid_precision(result),
    )


def pixel_settings(result: TranslationResult) -> tuple[object, ...]:
    """The settings that change the pixels, in a fixed order (they enter the UIDs)."""
    s = result.settings
    return (result.model.architecture, s.sampler, s.steps, s.seed, s.overlap, s.samples, s.t0)


def uid_precision(result: TranslationResult) -> str:
    """Device class and precision, e.g. "cpu-fp32" or "cuda-bf16": the arithmetic that made
    the pixels (CPU and GPU kernels round differently even at the same precision)."""
    device_class = str(result.device).split(":", 1)[0] or "cpu"
    return f"{device_class}-{result.precision}"


def _source_key(source: SliceSource) -> SourceKey:
    instance = source.sop_instance_uid
    if source.frame_number is not None:
        instance = f"{instance}#{source.frame_number}"
    return SourceKey(instance, source.pixel_digest, source.position)


def _checked_pixels(ct: CTVolume, result: TranslationResult) -> np.ndarray:
    """The MR array as uint16 in 0..4095 on exactly the CT's grid, or a ModelError."""
    mr = np.asarray(result.mr)
    if mr.shape != ct.hu.shape:
        raise ModelError(f"the model returned a {mr.shape} volume for a {ct.hu.shape} CT; "
                         "the synthetic MR must lie on the CT's grid")
    if len(ct.slices) != mr.shape[0]:
        raise ModelError(f"{len(ct.slices)} source slices for {mr.shape[0]} MR slices")
    if mr.size and (mr.min() < 0 or mr.max() > 4095 or not np.issubdtype(mr.dtype, np.integer)):
        raise ModelError("the model returned MR values outside 0..4095 (12-bit unsigned)")
    return mr.astype(np.uint16, copy=False)


# --- series-level attributes ------------------------------------------------------------------

def _series_dataset(ct: CTVolume, result: TranslationResult, options: EncodeOptions,
                    series_uid: str, when: dt.datetime) -> Dataset:
    """Everything that is the same on every instance of the MR series."""
    ds = Dataset()
    copy_elements(ct.header, ds, [0x00080005])  # SpecificCharacterSet, as received
    copy_elements(ct.header, ds, [t for t in ct.header.keys() if t.group == 0x0010])
    copy_elements(ct.header, ds, DEIDENTIFICATION_TAGS + STUDY_TAGS + SERIES_TAGS)
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                    "StudyID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "PatientPosition", "PositionReferenceIndicator"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # type 2: present, empty
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SOPClassUID = MRImageStorage
    ds.SyntheticData = "YES"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = _series_number(ct, options)
    ds.SeriesDescription = options.description_prefix
    ds.SeriesDate = ds.ContentDate = date
    ds.SeriesTime = ds.ContentTime = time
    _equipment(ds, result, options)
    _labels(ds, ct, result)
    _references(ds, ct)
    ds.ContributingEquipmentSequence = contributing_equipment(ct, result, options, when)
    _pixel_description(ds, ct, result, options)
    _mr_acquisition(ds)
    return ds


def _series_number(ct: CTVolume, options: EncodeOptions) -> int:
    try:
        ct_number = int(ct.header.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        ct_number = 0
    return (ct_number + options.series_number_offset) % (2**31 - 1)


def _equipment(ds: Dataset, result: TranslationResult, options: EncodeOptions) -> None:
    """Manufacturer, model name and software versions of the node and model (the image's
    equipment, and the 'Synthesizing' item of the contributing equipment)."""
    model = result.model
    ds.Manufacturer = _lo(options.manufacturer)
    ds.ManufacturerModelName = _lo(model.name)
    ds.SoftwareVersions = [_lo(f"ct2mri-node {options.node_version}"),
                           _lo(f"{model.name} {model.version}")]


def _labels(ds: Dataset, ct: CTVolume, result: TranslationResult) -> None:
    """Say in words that the image is synthetic, and how it was made."""
    model, settings = result.model, result.settings
    ds.ImageComments = (
        "SYNTHETIC IMAGE: generated from a CT series by a machine-learning model "
        f"({_ascii(model.name)} {_ascii(model.version)}) in ct2mri-node. It is not an acquired "
        "MR image and is NOT FOR DIAGNOSTIC USE."
    )
    ds.DerivationDescription = _ascii(
        f"Synthetic MR computed from CT series {ct.series_instance_uid} by model {model.name} "
        f"{model.version} ({model.architecture}, weights sha256 {model.weight_hash}); "
        f"{sampling_words(settings)}, {settings.steps} steps, seed {settings.seed}; global "
        "normalisation and automatic contrast enhancement; on the CT's own voxel grid."
    )[:1024]


def sampling_words(settings: TranslationSettings) -> str:
    """How the pixels were sampled, in words: the refine sampler's one evaluation is the diffusion
    network's one-pass estimate, not a denoising chain, and says so (issue 23)."""
    if settings.sampler == "refine" and settings.steps == 1:
        return "one-pass estimate of the diffusion network (refine sampler, no denoising steps)"
    if settings.sampler == "refine":
        return f"refine sampler (the estimate, noised to t0 {settings.t0}, then DDIM steps)"
    return f"{settings.sampler} sampler"


def _references(ds: Dataset, ct: CTVolume) -> None:
    """RelatedSeriesSequence (General Series): the source CT series, the same on every instance.

    ReferencedSeriesSequence lists only what each instance references itself, so it is set per
    slice (:func:`_referenced_series`), not here.
    """
    related = Dataset()
    related.StudyInstanceUID = ct.header.StudyInstanceUID
    related.SeriesInstanceUID = ct.series_instance_uid
    related.PurposeOfReferenceCodeSequence = [_code(*SOURCE_SERIES)]
    ds.RelatedSeriesSequence = [related]


def _referenced_series(series_uid: str, source: SliceSource) -> Dataset:
    """Common Instance Reference item: the CT series with the one instance this slice references
    in its SourceImageSequence (a constant size per instance, whatever the series length)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.sop_class_uid
    item.ReferencedSOPInstanceUID = source.sop_instance_uid
    referenced = Dataset()
    referenced.SeriesInstanceUID = series_uid
    referenced.ReferencedInstanceSequence = [item]
    return referenced


def contributing_equipment(ct: CTVolume, result: TranslationResult, options: EncodeOptions,
                           when: dt.datetime, work: str = "Synthetic MR") -> list[Dataset]:
    """ContributingEquipmentSequence items: our node and model (Synthesizing) and the CT scanner
    (Acquisition); ``work`` names what was made (the MR, or a companion object of it)."""
    model, settings = result.model, result.settings
    ours = Dataset()
    ours.PurposeOfReferenceCodeSequence = [_code(*SYNTHESIZING)]
    _equipment(ours, result, options)
    ours.ContributionDateTime = when.strftime("%Y%m%d%H%M%S%z")
    ours.ContributionDescription = _ascii(
        f"{work} by {model.name} {model.version} ({model.architecture}), weights sha256 "
        f"{model.weight_hash}, {settings.sampler} {settings.steps} steps, seed {settings.seed}"
    )[:1024]
    scanner = Dataset()
    scanner.PurposeOfReferenceCodeSequence = [_code(*ACQUISITION)]
    copy_elements(ct.header, scanner, (0x00080070, 0x00081090, 0x00181000, 0x00181020,
                                       0x00080080))
    if not scanner.get("Manufacturer"):
        scanner.Manufacturer = "UNKNOWN"   # type 1 in this sequence; the CT left it empty
    return [ours, scanner]


def _pixel_description(ds: Dataset, ct: CTVolume, result: TranslationResult,
                       options: EncodeOptions) -> None:
    """Image pixel, VOI and General Image attributes that do not vary per slice."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(ct.hu.shape[1]), int(ct.hu.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = format_number_as_ds(float(result.window_center))
    ds.WindowWidth = format_number_as_ds(max(1.0, float(result.window_width)))
    ds.PixelSpacing = [format_number_as_ds(float(v)) for v in ct.spacing[1:]]
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in ct.orientation]
    ds.SliceThickness = _slice_thickness(ct)
    ds.PatientOrientation = ""
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "YES" if options.burned_in_watermark else "NO"
    features = ct.header.get("RecognizableVisualFeatures")
    if features:
        ds.RecognizableVisualFeatures = features
    elif str(ct.header.get("BodyPartExamined", "")).upper() in _HEAD_PARTS:
        ds.RecognizableVisualFeatures = "YES"
    _lossy(ds, ct)


def _slice_thickness(ct: CTVolume) -> str:
    """The CT's own SliceThickness when it has one, else the slice spacing."""
    value = ct.header.get("SliceThickness")
    try:
        return format_number_as_ds(float(value)) if value not in (None, "") else \
            format_number_as_ds(float(ct.spacing[0]))
    except (TypeError, ValueError):
        return format_number_as_ds(float(ct.spacing[0]))


def _lossy(ds: Dataset, ct: CTVolume) -> None:
    if not ct.lossy:
        ds.LossyImageCompression = "00"
        return
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = list(ct.lossy_methods) or ["UNKNOWN"]
    ratio = ct.header.get("LossyImageCompressionRatio")
    if ratio:
        ds.LossyImageCompressionRatio = ratio


def _mr_acquisition(ds: Dataset) -> None:
    """Type 1 values that say 'research mode, no real sequence'; type 2 present and empty."""
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = ""
    ds.RepetitionTime = None
    ds.EchoTime = None
    ds.EchoTrainLength = None


# --- per-slice attributes ---------------------------------------------------------------------

def _slice_dataset(shared: Sequence[DataElement], normal: np.ndarray, index: int,
                   source: SliceSource, pixels: np.ndarray, sop_instance_uid: str,
                   source_series_uid: str) -> Dataset:
    """One instance: the series attributes plus position, references and pixels.

    Each instance gets its own copy of every series-level element, but the values are shared:
    text and numbers are immutable, and the series-level sequences are one object for the
    whole series. The references (SourceImageSequence, ReferencedSeriesSequence) name only
    this slice's source, so an instance's size does not depend on the series length. Treat
    the sequence items of an encoded instance as read-only.
    """
    ds = Dataset()
    for element in shared:
        ds.add(_shallow(element))
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in source.position]
    ds.SliceLocation = format_number_as_ds(_slice_location(normal, source))
    ds.SourceImageSequence = [_source_image(source)]
    ds.ReferencedSeriesSequence = [_referenced_series(source_series_uid, source)]
    ds[_PIXEL_DATA] = DataElement(_PIXEL_DATA, "OW",
                                  np.ascontiguousarray(pixels, dtype="<u2").tobytes())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"CT2MRI_{__version__}"[:16]
    ds.file_meta = meta
    return ds


def _shallow(element: DataElement) -> DataElement:
    """A new element with the same value; multi-valued text gets its own list."""
    copied = copy.copy(element)
    if isinstance(element.value, MultiValue):
        copied.value = list(element.value)
    return copied


def _normal(ct: CTVolume) -> np.ndarray:
    return np.cross(np.asarray(ct.orientation[:3]), np.asarray(ct.orientation[3:]))


def _slice_location(normal: np.ndarray, source: SliceSource) -> float:
    return round(float(np.dot(np.asarray(source.position), normal)), 6) + 0.0


def _source_image(source: SliceSource) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.sop_class_uid
    item.ReferencedSOPInstanceUID = source.sop_instance_uid
    if source.frame_number is not None:
        item.ReferencedFrameNumber = source.frame_number
    item.PurposeOfReferenceCodeSequence = [_code(*SOURCE_IMAGE)]
    item.SpatialLocationsPreserved = "YES"
    return item


# --- file bytes --------------------------------------------------------------------------------

class FileEncoder:
    """DICOM file bytes of encoded instances, each shared sequence value encoded only once.

    The instances of one series share their series-level sequences (contributing equipment,
    related series, codes), which pydicom's ``dcmwrite`` would re-encode in each file. This
    encoder writes the same bytes as
    ``ds.save_as(fp, enforce_file_format=True)`` (checked by the tests) and keeps the bytes of
    each sequence value it has seen. Datasets it cannot reproduce exactly (read from a file,
    another transfer syntax, a preamble of their own) go through ``dcmwrite`` unchanged.
    One encoder per series; it holds the encoded sequences until it is dropped.
    """

    def __init__(self) -> None:
        self._sequences: dict[tuple[int, int, str], tuple[object, bytes]] = {}

    def encode(self, ds: Dataset) -> bytes:
        """The bytes of ``ds`` as a DICOM file (preamble, file meta, dataset)."""
        if not _plain_explicit_le(ds):
            buffer = DicomBytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            return buffer.getvalue()
        fp = _buffer()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, _file_meta(ds), enforce_standard=True)
        encodings = ds.get("SpecificCharacterSet", default_encoding)
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:
                continue  # retired group lengths, as dcmwrite
            element = ds[tag]
            if element.VR == VR.SQ:
                fp.write(self._sequence(element, encodings))
                continue
            if " or " in element.VR:
                correct_ambiguous_vr_element(element, ds, True)
            write_data_element(fp, element, encodings)
        return bytes(fp.getvalue())

    def _sequence(self, element: DataElement, encodings: str | list[str]) -> bytes:
        key = (int(element.tag), id(element.value), repr(encodings))
        cached = self._sequences.get(key)
        if cached is None or cached[0] is not element.value:
            fp = _buffer()
            write_data_element(fp, element, encodings)
            cached = (element.value, bytes(fp.getvalue()))  # the value is kept: ids stay unique
            self._sequences[key] = cached
        return cached[1]


def _buffer() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    return fp


def _plain_explicit_le(ds: Dataset) -> bool:
    """True for a dataset built in memory for Explicit VR Little Endian (what we encode)."""
    meta = getattr(ds, "file_meta", None)
    return (
        meta is not None
        and meta.get("TransferSyntaxUID") == ExplicitVRLittleEndian
        and not getattr(ds, "preamble", None)
        and ds.original_encoding == (None, None)
        and not any(tag >> 16 in (0, 2) for tag in ds.keys())
    )


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """The file meta as ``dcmwrite(enforce_file_format=True)`` completes it (on a copy)."""
    meta = copy.deepcopy(ds.file_meta)
    for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                  ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        stated, actual = meta.get(meta_keyword), ds.get(keyword)
        if stated is None or (actual and actual != stated):
            setattr(meta, meta_keyword, actual)
    validate_file_meta(meta, enforce_standard=True)
    return meta


# --- helpers ----------------------------------------------------------------------------------

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ascii(text: str) -> str:
    """Our own text in the default repertoire (valid under any Specific Character Set)."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text)).replace("\\", "/")


def _lo(text: str) -> str:
    return _ascii(text)[:64]


def copy_elements(source: Dataset, target: Dataset, tags: Iterable[int | BaseTag]) -> None:
    """Copy each of ``tags`` present in ``source`` into ``target``, text as its received bytes.

    Decoding and re-encoding can change bytes (for ISO 2022, the choice of escape sequences),
    so character-set dependent text that arrived undecoded is copied as its raw bytes.
    """
    encodings = convert_encodings(source.get("SpecificCharacterSet") or "ISO_IR 6")
    for tag in tags:
        tag = Tag(tag)
        if tag not in source:
            continue
        element = source.get_item(tag)
        if isinstance(element, RawDataElement):
            target[tag] = _from_raw(source, element, encodings)
        else:
            target[tag] = copy.deepcopy(element)


def _from_raw(source: Dataset, raw: RawDataElement, encodings: Sequence[str]) -> DataElement:
    """A DataElement carrying ``raw``'s exact bytes where they depend on the character set."""
    vr = raw.VR or _dictionary_vr(raw.tag)
    value = raw.value if raw.value is not None else b""
    if vr == "PN" and value:
        return DataElement(raw.tag, vr, PersonName(value, encodings=list(encodings)))
    if vr in _CHARSET_VRS and isinstance(value, bytes) and not value.isascii():
        return DataElement(raw.tag, vr, value)
    return copy.deepcopy(source[raw.tag])  # ASCII text, numbers, dates, sequences


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


__all__ = ["EncodeOptions", "FileEncoder", "encode_series", "output_uids", "pixel_settings",
           "uid_precision", "copy_elements"]
