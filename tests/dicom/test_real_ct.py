"""CT as it really arrives: every case goes assemble -> tiny model -> encode -> files on disk.

One parametrised test over generated series (10 slices of 32x32) that differ in one way each:
transfer syntax (compressed with dcmtk's or pydicom's encoders, decoded by the licence-clean
plugins), lossy sources, multi-frame objects, patient position, oblique planes, non-square
pixels, shuffled names, a localizer mixed in, pixel representation and rescale, character set.
Each output must be conformant (strict read + dciodvfy), labelled as synthetic, lie exactly on
the CT's own grid and carry the CT's patient and study bytes unchanged.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedCTImageStorage,
    RLELossless,
)

from ct2mri_node.errors import SeriesRejected
from ct2mri_node.jobs.pipeline import PipelineResult, run_pipeline, write_series
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.training.ct_dicom import ct_series_datasets, encode_transfer_syntax, write_datasets
from ct2mri_node.volume.assemble import read_series
from dicom_checks import assert_valid_files, oblique_orientation, phantom_hu

SHAPE = (10, 32, 32)
#: Raw bytes of these must be identical in the CT and every MR instance.
COPIED_TAGS = (0x00080005, 0x00100010, 0x00100020, 0x00100030, 0x00100040, 0x0020000D,
               0x00080020, 0x00080030, 0x00080050, 0x00081030, 0x00200052)


@dataclass(frozen=True)
class Case:
    """One way a CT series can arrive; everything not named is a plain HFS axial series."""

    series: dict[str, Any] = field(default_factory=dict)   # ct_series_datasets keywords
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.9)
    syntax: str = ExplicitVRLittleEndian      # pydicom encodes these
    pydicom_args: dict[str, Any] = field(default_factory=dict)
    tools: tuple[tuple[str, ...], ...] = ()    # dcmtk commands applied to every file, in order
    multiframe: str | None = None              # SOP class of one multi-frame object
    localizer: bool = False
    lossy_method: str | None = None            # expected LossyImageCompressionMethod
    lossy_ratio: bool = False                  # the source states a ratio that must be copied
    on_disk: str | None = None                 # transfer syntax after the tools (else ``syntax``)
    max_error_hu: float | None = None          # a lossy codec's bound on any voxel's error


CASES = {
    # transfer syntaxes, lossless: decoded HU must equal the source's exactly
    "implicit-le": Case(syntax=ImplicitVRLittleEndian),
    "explicit-le": Case(),
    "deflated": Case(syntax=DeflatedExplicitVRLittleEndian),
    "rle-dcmtk": Case(tools=(("dcmcrle",),), on_disk=RLELossless),
    "jpeg-process14-dcmtk": Case(tools=(("dcmcjpeg", "--encode-lossless"),), on_disk=JPEGLossless),
    "jpeg-sv1-dcmtk-signed": Case(series={"signed": True},
                                  tools=(("dcmcjpeg", "--encode-lossless-sv1"),),
                                  on_disk=JPEGLosslessSV1),
    "jpegls-lossless-dcmtk": Case(tools=(("dcmcjpls", "--encode-lossless"),),
                                   on_disk=JPEGLSLossless),
    "jpegls-lossless-pydicom-signed": Case(series={"signed": True}, syntax=JPEGLSLossless),
    "jpeg2000-lossless": Case(syntax=JPEG2000Lossless),
    # lossy sources: accepted, and the output says so
    "jpeg-baseline-lossy": Case(tools=(("dcmcjpeg", "--encode-baseline"),),
                                lossy_method="ISO_10918_1", lossy_ratio=True,
                                on_disk=JPEGBaseline8Bit),
    "jpegls-near-lossless": Case(tools=(("dcmcjpls", "--encode-nearlossless"),),
                                 lossy_method="ISO_14495_1", lossy_ratio=True,
                                 max_error_hu=2.0,   # dcmcjpls' default NEAR: 2 stored values, slope 1
                                 on_disk=JPEGLSNearLossless),
    "jpeg2000-lossy-syntax-only": Case(syntax=JPEG2000, pydicom_args={"j2k_cr": [3]},
                                       lossy_method="ISO_15444_1"),
    "lossy-then-decompressed": Case(tools=(("dcmcjpeg", "--encode-baseline"), ("dcmdjpeg",)),
                                    lossy_method="ISO_10918_1", lossy_ratio=True),
    # multi-frame objects
    "legacy-converted-enhanced-ct": Case(multiframe=LegacyConvertedEnhancedCTImageStorage),
    "enhanced-ct": Case(multiframe=EnhancedCTImageStorage, series={"signed": True}),
    "enhanced-ct-jpegls": Case(multiframe=EnhancedCTImageStorage, syntax=JPEGLSLossless),
    # patient position and plane
    "feet-first-supine": Case(series={"orientation": (-1, 0, 0, 0, 1, 0),
                                      "patient_position": "FFS", "origin": (10, -20, 300)}),
    "head-first-prone": Case(series={"orientation": (-1, 0, 0, 0, -1, 0),
                                     "patient_position": "HFP", "origin": (5, 40, -120)}),
    "feet-first-prone": Case(series={"orientation": (1, 0, 0, 0, -1, 0),
                                     "patient_position": "FFP"}),
    "sagittal": Case(series={"orientation": (0, 1, 0, 0, 0, -1)}),
    "oblique": Case(series={"orientation": oblique_orientation(), "origin": (-12.5, 7.25, 33.0)},
                    spacing=(2.0, 0.8, 0.8)),
    "non-square-pixels": Case(spacing=(3.0, 0.5, 1.3)),
    # a localizer mixed in, and pixel representations with any rescale
    "localizer-mixed-in": Case(localizer=True),
    "signed-no-rescale": Case(series={"signed": True}),
    "signed-intercept-1024": Case(series={"signed": True, "rescale_intercept": -1024.0}),
    "signed-slope-half": Case(series={"signed": True, "rescale_intercept": -100.0,
                                      "rescale_slope": 0.5}),
    "unsigned-slope-two": Case(series={"rescale_intercept": -2048.0, "rescale_slope": 2.0}),
    # character sets: names copied byte for byte
    "latin-1": Case(series={"patient_name": "Müller^Jörg", "character_set": "ISO_IR 100",
                            "study_description": "Kopf Untersuchung äöü"}),
    "utf-8": Case(series={"patient_name": "Müller^Jörg=ミュラー", "character_set": "ISO_IR 192",
                          "study_description": "頭部 Kopf"}),
    "iso-2022-japanese": Case(series={"patient_name": "Yamada^Tarou=山田^太郎=やまだ^たろう",
                                      "character_set": ["", "ISO 2022 IR 87"],
                                      "study_description": "頭部"}),
}


SETTINGS = TranslationSettings(steps=2, device="cpu")   # the session ``translator``'s (tests/conftest.py)


# --- building the input ------------------------------------------------------------------------

def _source_datasets(case: Case) -> list[Dataset]:
    """The uncompressed single-frame slices of the case, in slice order (slice k at k*spacing)."""
    return ct_series_datasets(phantom_hu(*SHAPE), case.spacing, seed=7, **case.series)


def _multiframe(slices: list[Dataset], sop_class: str) -> Dataset:
    """One multi-frame CT from ``slices``: highdicom's Legacy Converted Enhanced CT, or the same
    object declared as Enhanced CT (its functional groups are what assembly reads)."""
    ds = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=slices[0].SeriesInstanceUID, series_number=1,
        sop_instance_uid=slices[0].SOPInstanceUID + ".1", instance_number=1)
    if sop_class == EnhancedCTImageStorage:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    return ds


def _localizer(case: Case) -> Dataset:
    """A lateral scout of the same series, tagged LOCALIZER."""
    scout = ct_series_datasets(phantom_hu(1, 32, 32), case.spacing, seed=7,
                               orientation=(0, 1, 0, 0, 0, -1), **case.series)[0]
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.7.1"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return scout


def _write_case(case: Case, folder: Path) -> list[Path]:
    """Write the case's files (shuffled names), compressed as the case says; return the paths."""
    slices = _source_datasets(case)
    datasets = [_multiframe(slices, case.multiframe)] if case.multiframe else list(slices)
    if case.localizer:
        datasets.append(_localizer(case))
    for ds in datasets:
        if case.pydicom_args:
            ds.compress(case.syntax, generate_instance_uid=False, **case.pydicom_args)
        else:
            encode_transfer_syntax(ds, case.syntax)
    paths = write_datasets(datasets, folder, seed=3, shuffle_names=True)
    for command in case.tools:
        for path in paths:
            _dcmtk(command, path)
    return paths


def _dcmtk(command: tuple[str, ...], path: Path) -> None:
    """Run a dcmtk converter on ``path`` in place."""
    tmp = path.with_suffix(".tmp")
    proc = subprocess.run([*command, str(path), str(tmp)], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed on {path.name}: {proc.stderr}")
    os.replace(tmp, path)


# --- checks ------------------------------------------------------------------------------------

def _ct_planes(paths: list[Path]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """Geometry of every CT frame, read straight from the files: key (SOP UID, frame)."""
    planes = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            planes[(ds.SOPInstanceUID, None)] = _plane(ds, ds, ds, ds)
            continue
        shared = ds.SharedFunctionalGroupsSequence[0]
        for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
            planes[(ds.SOPInstanceUID, number)] = _plane(
                ds, item.PlanePositionSequence[0], shared.PlaneOrientationSequence[0],
                shared.PixelMeasuresSequence[0])
    return planes


def _plane(ds: Dataset, position: Dataset, orientation: Dataset, measures: Dataset) -> dict[str, Any]:
    return {
        "sop_class": ds.SOPClassUID,
        "position": [float(v) for v in position.ImagePositionPatient],
        "orientation": [float(v) for v in orientation.ImageOrientationPatient],
        "spacing": [float(v) for v in measures.PixelSpacing],
        "size": (ds.Rows, ds.Columns),
        "frame_of_reference": ds.FrameOfReferenceUID,
        "image_type": list(ds.get("ImageType", [])),
    }


def _raw(path: Path) -> dict[int, bytes | None]:
    """The undecoded bytes of the copied patient and study elements of one file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {tag: (ds.get_item(tag).value if tag in ds else None) for tag in COPIED_TAGS}


def _assert_on_the_ct_grid(ct_paths: list[Path], mr_paths: list[Path], outcome: PipelineResult) -> None:
    """Each MR instance sits exactly on the CT frame it references, in ascending order."""
    planes = _ct_planes(ct_paths)
    mr = sorted((pydicom.dcmread(p) for p in mr_paths), key=lambda d: d.InstanceNumber)
    images = {k: v for k, v in planes.items() if "LOCALIZER" not in v["image_type"]}
    assert len(mr) == len(images) == SHAPE[0]
    referenced = set()
    for k, ds in enumerate(mr):
        (source,) = ds.SourceImageSequence
        frame = int(source.ReferencedFrameNumber) if "ReferencedFrameNumber" in source else None
        plane = images[(source.ReferencedSOPInstanceUID, frame)]
        referenced.add((source.ReferencedSOPInstanceUID, frame))
        assert source.ReferencedSOPClassUID == plane["sop_class"]
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(plane["position"], abs=1e-4)
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(plane["orientation"], abs=1e-6)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(plane["spacing"], abs=1e-6)
        assert (ds.Rows, ds.Columns) == plane["size"]
        assert ds.FrameOfReferenceUID == plane["frame_of_reference"]
        assert np.array_equal(ds.pixel_array, outcome.translation.mr[k])
        assert ds.SyntheticData == "YES" and ds.SOPClassUID == pydicom.uid.MRImageStorage
        code = source.PurposeOfReferenceCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("121322", "DCM")
        assert source.SpatialLocationsPreserved == "YES"
    assert referenced == set(images)
    normal = np.cross(mr[0].ImageOrientationPatient[:3], mr[0].ImageOrientationPatient[3:])
    along = [float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])) for d in mr]
    assert np.allclose(np.diff(along), outcome.volume.spacing[0], atol=1e-3)


def _assert_hu(case: Case, outcome: PipelineResult) -> None:
    """The decoded volume is the source's HU (exactly when lossless) in slice order."""
    expected = np.stack([
        ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for ds in _source_datasets(case)
    ]).astype(np.float32)
    if case.lossy_method is None:
        assert np.array_equal(outcome.volume.hu, expected)
        return
    # bias and error bounded apart: a constant offset (a wrong rescale on the lossy path) moves
    # the mean signed error, which decoding noise leaves near 0 (seen: -11 HU for 8-bit JPEG
    # baseline, the worst; below 1 HU for the others)
    difference = outcome.volume.hu.astype(np.float64) - expected
    assert abs(float(difference.mean())) < 20.0, f"lossy decoding biased by {difference.mean():.1f} HU"
    assert float(np.abs(difference).mean()) < 60.0, "lossy decoding far from the source"   # seen: 44 HU
    if case.max_error_hu is not None:
        assert float(np.abs(difference).max()) <= case.max_error_hu


def _assert_lossy_labels(case: Case, ct_paths: list[Path], mr_paths: list[Path]) -> None:
    mr = pydicom.dcmread(mr_paths[0])
    if case.lossy_method is None:
        assert mr.LossyImageCompression == "00"
        return
    assert mr.LossyImageCompression == "01"
    methods = mr.LossyImageCompressionMethod
    assert case.lossy_method in ([methods] if isinstance(methods, str) else list(methods))
    if case.lossy_ratio:
        ratios = {str(pydicom.dcmread(p).LossyImageCompressionRatio) for p in ct_paths}
        assert str(mr.LossyImageCompressionRatio) in ratios


# --- the test ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_ct_as_it_arrives(name: str, tmp_path: Path, translator: Translator,
                          caplog: pytest.LogCaptureFixture) -> None:
    case = CASES[name]
    ct_paths = _write_case(case, tmp_path / "ct")
    on_disk = pydicom.dcmread(ct_paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert on_disk == (case.on_disk or case.syntax)  # the input really is in that syntax
    arrival = sorted(ct_paths, key=lambda p: p.name)
    random.Random(name).shuffle(arrival)
    with caplog.at_level(logging.INFO, logger="ct2mri_node"):
        outcome = run_pipeline(read_series(arrival), translator)
    mr_paths = write_series(outcome.datasets, tmp_path / "mr")
    assert_valid_files(mr_paths)
    _assert_on_the_ct_grid(ct_paths, mr_paths, outcome)
    _assert_hu(case, outcome)
    _assert_lossy_labels(case, ct_paths, mr_paths)
    source_bytes = _raw(ct_paths[0])
    assert all(_raw(p) == source_bytes for p in mr_paths)
    if "patient_name" in case.series:
        assert str(pydicom.dcmread(mr_paths[0]).PatientName) == case.series["patient_name"]
    if case.localizer:
        assert any("left out localizer" in note for note in outcome.volume.notes)
        assert any("left out localizer" in r.getMessage() and r.levelno == logging.INFO
                   for r in caplog.records)
    else:
        assert outcome.volume.notes == []


def test_compressed_inputs_use_licence_clean_decoders() -> None:
    """The GPL pylibjpeg-libjpeg is absent; JPEG Lossless is decoded by GDCM (Apache-2.0)."""
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("pylibjpeg-libjpeg")
    assert importlib.util.find_spec("libjpeg") is None
    from pydicom.pixels.decoders import JPEGLosslessDecoder, JPEGLosslessSV1Decoder

    for decoder in (JPEGLosslessDecoder, JPEGLosslessSV1Decoder):
        assert set(decoder.available_plugins) == {"gdcm"}


def test_lossy_syntaxes_the_node_does_not_decode_are_refused_clearly(
    tmp_path: Path, translator: Translator
) -> None:
    """12-bit JPEG Extended has no licence-clean decoder here: a refusal that names it."""
    case = Case(tools=(("dcmcjpeg", "--encode-extended"),))
    paths = _write_case(case, tmp_path / "ct")
    with pytest.raises(SeriesRejected) as info:
        run_pipeline(read_series(paths), translator)
    assert info.value.reason == "undecodable_pixels"
    assert "JPEG Extended" in str(info.value) and "lossless syntax" in str(info.value)


def test_same_series_twice_gives_the_same_objects(tmp_path: Path, tiny_checkpoint: Path,
                                                  translator: Translator) -> None:
    """Another arrival order and a freshly loaded model: identical UIDs, pixels and references."""
    paths = _write_case(CASES["jpeg-process14-dcmtk"], tmp_path / "ct")
    first = run_pipeline(read_series(paths), translator).datasets
    second = run_pipeline(read_series(list(reversed(paths))), Translator(tiny_checkpoint, SETTINGS)).datasets
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in second]
    assert len({d.SeriesInstanceUID for d in first + second}) == 1
    for a, b in zip(first, second, strict=True):
        assert a.PixelData == b.PixelData
        assert a.SourceImageSequence == b.SourceImageSequence
