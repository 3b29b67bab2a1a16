"""Companion objects of a synthetic MR series: the uncertainty map and the QA image.

- **Uncertainty map**: a Parametric Map (1.2.840.10008.5.1.4.1.1.30, ``highdicom.pm``) of the
  per-voxel standard deviation of the synthetic MR signal across the translation's samples
  (test-time flips and sampler noise) times the model card's conformal scale, float pixels in
  MR pixel units; its content and derivation descriptions say the sources, the scale and the
  coverage it was calibrated to (or that it is uncalibrated), one frame per CT slice on the CT's grid and frame of
  reference (plane positions from the CT slices), its source images the MR instances and
  the CT instances they were made from.
- **QA image**: a Secondary Capture (``highdicom.sc``) of the QA montage: CT, synthetic MR and,
  with several samples, the uncertainty map, axial, coronal and sagittal, with a burned-in
  "QA - SYNTHETIC MR - NOT FOR DIAGNOSIS" banner.

Both are in the MR's study, labelled synthetic (``SyntheticData`` YES, image comments,
derivation description, contributing equipment like the MR's) and get deterministic UIDs
derived from the MR series UID, which already stands for everything that made the pixels.
A pure module: values in, datasets out (no I/O, no torch).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from highdicom.sr.coding import CodedConcept
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
)

from ..errors import ModelError
from ..render.montage import CT_WINDOW, Row, auto_window, render
from .encode import SOURCE_SERIES, EncodeOptions, _code, contributing_equipment, copy_elements
from .uids import uid_from

if TYPE_CHECKING:  # deliver/ never imports the model (and torch) at run time
    from ..model.translator import TranslationResult
    from ..volume.assemble import CTVolume

log = logging.getLogger(__name__)

#: SOP classes of the companions (what a destination must accept to receive them).
COMPANION_SOP_CLASSES: tuple[str, ...] = (str(ParametricMapStorage), str(SecondaryCaptureImageStorage))
#: File name prefixes in the job's output folder (they sort after the MR's ``MR...``).
FILE_PREFIXES: dict[str, str] = {str(ParametricMapStorage): "PM", str(SecondaryCaptureImageStorage): "SC"}

MAP_DESCRIPTION = "SD MAP - SYNTHETIC MR - NOT FOR DIAGNOSIS"
QA_DESCRIPTION = "QA - SYNTHETIC MR - NOT FOR DIAGNOSIS"
#: The quantity and unit of the map's Real World Value Mapping. The MR pixel values have no
#: physical unit (post-processed 12-bit grey levels), so the unit is UCUM "arbitrary unit".
STANDARD_DEVIATION = CodedConcept("386136009", "SCT", "Standard Deviation")
ARBITRARY_UNIT = CodedConcept("[arb'U]", "UCUM", "arbitrary unit")
#: Offsets of the companions' series numbers above the MR's.
MAP_SERIES_OFFSET, QA_SERIES_OFFSET = 1, 2


@dataclass(frozen=True)
class CompanionOptions:
    """Which companions to make (``outputs:`` of the configuration)."""

    uncertainty_map: bool = False
    qa_capture: bool = False


def encode_companions(ct: CTVolume, result: TranslationResult, mr: Sequence[Dataset],
                      companions: CompanionOptions, options: EncodeOptions = EncodeOptions(),
                      ct_datasets: Sequence[Dataset] = ()) -> list[Dataset]:
    """The companions ``companions`` asks for (map first, then QA image); [] when none.

    ``mr`` is the encoded MR series of ``result`` (its UIDs and attributes are referenced);
    ``ct_datasets`` are the received CT datasets, referenced by the map where given.
    ModelError when a map is asked for and ``result`` has no uncertainty (one sample).
    """
    out: list[Dataset] = []
    if companions.uncertainty_map:
        out.append(encode_uncertainty_map(ct, result, mr, options, ct_datasets))
    if companions.qa_capture:
        out.append(encode_qa_capture(ct, result, mr, options))
    return out


def companion_uids(kind: str, mr_series_uid: str) -> tuple[str, str]:
    """(series, instance) UIDs of companion ``kind`` ("uncertainty-map" | "qa-capture")."""
    return uid_from(kind, mr_series_uid, "series"), uid_from(kind, mr_series_uid, "instance", 1)


def _checked_uncertainty(ct: CTVolume, result: TranslationResult) -> np.ndarray:
    sd = result.uncertainty
    if sd is None:
        raise ModelError("an uncertainty map needs a translation with samples >= 2 (this one has "
                         f"{result.settings.samples}); set model.samples: 2 or more")
    sd = np.asarray(sd, dtype=np.float32)
    if sd.shape != ct.hu.shape:
        raise ModelError(f"the uncertainty map is {sd.shape} for a {ct.hu.shape} CT; it must lie on the CT's grid")
    if not np.isfinite(sd).all() or (sd.size and float(sd.min()) < 0.0):
        raise ModelError("the uncertainty map has negative or non-finite values")
    return sd


def _set_equipment(ds: Dataset, equipment: list[Dataset]) -> None:
    """Our node and the CT scanner first (as on the MR), then highdicom's own item; highdicom's
    automatic "acquisition equipment" of the source image (the MR, i.e. ourselves) is dropped."""
    library = [item for item in ds.get("ContributingEquipmentSequence", [])
               if "highdicom" in str(item.get("Manufacturer", "")).lower()]
    ds.ContributingEquipmentSequence = [*equipment, *library]


def _label(ds: Dataset, ct: CTVolume, result: TranslationResult, mr_series_uid: str, what: str,
           note: str = "") -> None:
    """Synthetic / derived / not for diagnosis, in the words the MR uses, and the related series
    (``note``: a further sentence for the derivation description)."""
    model, settings = result.model, result.settings
    ds.SyntheticData = "YES"
    ds.ImageComments = (
        f"SYNTHETIC IMAGE DERIVATIVE: {what} of a synthetic MR series generated from a CT series by a "
        f"machine-learning model ({model.name} {model.version}) in ct2mri-node. Not an acquired image; "
        "NOT FOR DIAGNOSTIC USE.")[:10240]
    ds.DerivationDescription = (
        f"{what} of synthetic MR series {mr_series_uid}, computed from CT series {ct.series_instance_uid} "
        f"by model {model.name} {model.version} ({model.architecture}, weights sha256 {model.weight_hash}); "
        f"{settings.sampler} sampler, {settings.steps} steps, {settings.samples} samples, seed "
        f"{settings.seed}; on the CT's own voxel grid.{' The map is the ' + note + '.' if note else ''}")[:1024]
    related = []
    for series_uid in (ct.series_instance_uid, mr_series_uid):
        item = Dataset()
        item.StudyInstanceUID = ct.header.StudyInstanceUID
        item.SeriesInstanceUID = series_uid
        item.PurposeOfReferenceCodeSequence = [_code(*SOURCE_SERIES)]
        related.append(item)
    ds.RelatedSeriesSequence = related


def _series_number(mr: Sequence[Dataset], offset: int) -> int:
    return (int(mr[0].SeriesNumber) + offset) % (2**31 - 1)


def _ct_sources(ct: CTVolume, ct_datasets: Sequence[Dataset]) -> list[Dataset]:
    """The received CT datasets that are slices of the volume (localizers left out), in order."""
    used = {s.sop_instance_uid for s in ct.slices}
    seen: set[str] = set()
    out = []
    for ds in ct_datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in used and uid not in seen:
            seen.add(uid)
            out.append(ds)
    return out


def encode_uncertainty_map(ct: CTVolume, result: TranslationResult, mr: Sequence[Dataset],
                           options: EncodeOptions = EncodeOptions(),
                           ct_datasets: Sequence[Dataset] = ()) -> Dataset:
    """The Parametric Map of ``result.uncertainty`` (see the module docstring)."""
    sd = _checked_uncertainty(ct, result)
    if len(mr) != sd.shape[0]:
        raise ModelError(f"{len(mr)} MR instances for an uncertainty map of {sd.shape[0]} slices")
    mr_series_uid = str(mr[0].SeriesInstanceUID)
    calibration = result.calibration
    # the scale changes the map's pixels but not the MR's, so it enters the map's own UIDs
    kind = "uncertainty-map" if calibration.scale == 1.0 else f"uncertainty-map x{calibration.scale!r}"
    series_uid, instance_uid = companion_uids(kind, mr_series_uid)
    when = options.contribution_datetime or dt.datetime.now(dt.timezone.utc)
    top = float(sd.max()) if sd.size else 0.0
    samples = result.settings.samples
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SD",
        lut_explanation=f"SD of synthetic MR across {samples} flip/noise samples"[:64],
        unit=ARBITRARY_UNIT,
        value_range=(0.0, max(top, 1.0)),
        slope=1.0,
        intercept=0.0,
        quantity_definition=STANDARD_DEVIATION,
    )
    spacing = ct.spacing
    pm = hd.pm.ParametricMap(
        source_images=list(mr),
        pixel_array=sd,
        series_instance_uid=series_uid,
        series_number=_series_number(mr, MAP_SERIES_OFFSET),
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=options.manufacturer[:64],
        manufacturer_model_name=result.model.name[:64],
        software_versions=f"ct2mri-node {options.node_version}"[:64],
        device_serial_number="0",
        contains_recognizable_visual_features=str(ct.header.get("RecognizableVisualFeatures", "")) == "YES",
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=max(top, 1.0) / 2.0,
                                                         window_width=max(top, 1.0))],
        content_label="SDMAP",
        content_description=calibration.short_label(samples),
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=(float(spacing[1]), float(spacing[2])),
            slice_thickness=float(spacing[0]),
            spacing_between_slices=float(spacing[0]),
        ),
        plane_orientation=hd.PlaneOrientationSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            image_orientation=[float(v) for v in ct.orientation],
        ),
        plane_positions=[
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in s.position])
            for s in ct.slices
        ],
        further_source_images=_ct_sources(ct, ct_datasets) or None,
    )
    _set_equipment(pm, contributing_equipment(ct, result, options, when, "Uncertainty map of a synthetic MR"))
    pm.SeriesDescription = MAP_DESCRIPTION
    pm.Laterality = ""   # type 2C, empty: the map covers the CT's whole field (the MR says ImageLaterality U)
    pm.ContentDate, pm.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    pm.SeriesDate, pm.SeriesTime = pm.ContentDate, pm.ContentTime
    _label(pm, ct, result, mr_series_uid, "Per-voxel standard deviation across samples",
           note=calibration.sentence(samples))
    log.info("encoded uncertainty map %s for MR series %s", series_uid, mr_series_uid)
    return pm


def qa_montage(ct: CTVolume, result: TranslationResult, cell: int = 192) -> np.ndarray:
    """The QA montage as uint8 greyscale: a banner, then rows CT, sMR and (with samples) SD."""
    rows = [Row("CT", ct.hu, CT_WINDOW), Row("sMR", result.mr, (result.window_center, result.window_width))]
    if result.uncertainty is not None:
        sd = np.asarray(result.uncertainty, dtype=np.float32)
        centre, width = auto_window(sd, sd > 0)
        top = max(centre + width / 2.0, 1e-3)
        rows.append(Row(f"SD x{result.settings.samples}", sd, (top / 2.0, top)))
    body = render(rows, ct.spacing, cell=cell)
    banner = 20
    image = Image.new("L", (body.width, body.height + banner), 0)
    image.paste(body, (0, banner))
    ImageDraw.Draw(image).text((4, 4), f"{QA_DESCRIPTION} - {result.model.name[:40]}", fill=255)
    return np.asarray(image, dtype=np.uint8)


def encode_qa_capture(ct: CTVolume, result: TranslationResult, mr: Sequence[Dataset],
                      options: EncodeOptions = EncodeOptions()) -> Dataset:
    """The Secondary Capture of :func:`qa_montage` in the MR's study (see the module docstring)."""
    mr_series_uid = str(mr[0].SeriesInstanceUID)
    series_uid, instance_uid = companion_uids("qa-capture", mr_series_uid)
    when = options.contribution_datetime or dt.datetime.now(dt.timezone.utc)
    pixels = qa_montage(ct, result)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=mr[0],
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "P"),   # replaced below: the montage mixes three planes
        series_instance_uid=series_uid,
        series_number=_series_number(mr, QA_SERIES_OFFSET),
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=options.manufacturer[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,   # from_ref_dataset defaults to Implicit VR
    )
    copy_elements(mr[0], sc, [0x00080005])   # SpecificCharacterSet, as the MR (and CT) has it
    _set_equipment(sc, contributing_equipment(ct, result, options, when, "QA montage of a synthetic MR"))
    sc.PatientOrientation = ""   # type 2C, empty: no single orientation fits axial, coronal and sagittal panels
    sc.ImageLaterality = "U"   # as on the MR: the montage covers the CT's whole field
    sc.SeriesDescription = QA_DESCRIPTION
    sc.Modality = "OT"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"   # the banner and the row labels are text in the pixels
    sc.ContentDate, sc.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    sc.SeriesDate, sc.SeriesTime = sc.ContentDate, sc.ContentTime
    _label(sc, ct, result, mr_series_uid, "QA montage")
    log.info("encoded QA image %s for MR series %s", series_uid, mr_series_uid)
    return sc
