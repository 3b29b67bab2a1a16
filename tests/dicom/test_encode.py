"""The synthetic MR encoder against shared/DICOM-OUTPUT.md: labels, references, geometry, bytes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ct2mri_node.deliver.encode import EncodeOptions, encode_series
from ct2mri_node.errors import ModelError
from ct2mri_node.volume.assemble import assemble
from dicom_checks import MODEL, WHEN, assert_valid_datasets, ct_volume, phantom_hu, translation_result

CT_ONLY = ("KVP", "RescaleIntercept", "RescaleSlope", "RescaleType", "ConvolutionKernel",
           "ExposureTime", "XRayTubeCurrent", "Exposure", "CTDIvol")


def _code(item: Dataset) -> tuple[str, str, str]:
    return (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)


def test_profile(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu, body_part="HEAD", patient_position="HFS")
    result = translation_result(hu.shape)
    out = encode_series(ct, result, EncodeOptions(contribution_datetime=WHEN))
    back = assert_valid_datasets(out, tmp_path / "mr")
    assert len(back) == len(ct.slices)
    series_uids = {ds.SeriesInstanceUID for ds in back}
    assert len(series_uids) == 1 and ct.series_instance_uid not in series_uids
    ct_instance_uids = [s.sop_instance_uid for s in ct.slices]
    for k, ds in enumerate(back):
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SyntheticData == "YES"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
        assert ds.SeriesDescription.startswith("SYNTHETIC MR - NOT FOR DIAGNOSIS")
        assert "NOT FOR DIAGNOSTIC USE" in ds.ImageComments
        assert ct.series_instance_uid in ds.DerivationDescription and "7 steps" in ds.DerivationDescription
        assert "DerivationCodeSequence" not in ds
        assert ds.InstanceNumber == k + 1
        assert ds.Modality == "MR" and ds.ScanningSequence == "RM" and ds.SequenceVariant == "NONE"
        for keyword in ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength"):
            assert keyword in ds and ds[keyword].is_empty, keyword
        assert "MagneticFieldStrength" not in ds
        assert not [kw for kw in CT_ONLY if kw in ds]
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert np.array_equal(ds.pixel_array, result.mr[k])
        assert float(ds.WindowCenter) == 1500.0 and float(ds.WindowWidth) == 3000.0
        assert ds.BurnedInAnnotation == "NO" and ds.LossyImageCompression == "00"
        assert ds.ImageLaterality == "U" and "PatientOrientation" in ds
        assert ds.RecognizableVisualFeatures == "YES"
        # geometry and frame of reference are the CT's
        assert ds.FrameOfReferenceUID == ct.frame_of_reference_uid
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(ct.slices[k].position)
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(ct.orientation)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(ct.spacing[1:])
        assert (ds.Rows, ds.Columns) == hu.shape[1:]
        assert ds.PatientPosition == "HFS" and ds.BodyPartExamined == "HEAD"
        # per-slice source reference
        (source,) = ds.SourceImageSequence
        assert source.ReferencedSOPInstanceUID == ct_instance_uids[k]
        assert source.ReferencedSOPClassUID == pydicom.uid.CTImageStorage
        assert source.SpatialLocationsPreserved == "YES"
        assert _code(source.PurposeOfReferenceCodeSequence[0]) == (
            "121322", "DCM", "Source image for image processing operation")
        # Common Instance Reference: the CT series with exactly this instance's own source
        (referenced,) = ds.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == ct.series_instance_uid
        (item,) = referenced.ReferencedInstanceSequence
        assert item.ReferencedSOPInstanceUID == ct_instance_uids[k]
        assert item.ReferencedSOPClassUID == source.ReferencedSOPClassUID
    first = back[0]
    assert first.StudyInstanceUID == ct.header.StudyInstanceUID
    assert int(first.SeriesNumber) == int(ct.header.SeriesNumber) + 1000
    (related,) = first.RelatedSeriesSequence
    assert related.SeriesInstanceUID == ct.series_instance_uid
    assert _code(related.PurposeOfReferenceCodeSequence[0])[0] == "121323"
    ours, scanner = first.ContributingEquipmentSequence
    assert _code(ours.PurposeOfReferenceCodeSequence[0]) == ("109100", "DCM", "Synthesizing Equipment")
    assert MODEL.weight_hash in ours.ContributionDescription and "seed 0" in ours.ContributionDescription
    assert ours.ContributionDateTime.startswith("20260203040506")
    assert _code(scanner.PurposeOfReferenceCodeSequence[0]) == ("109101", "DCM", "Acquisition Equipment")
    assert scanner.Manufacturer == ct.header.Manufacturer
    assert first.Manufacturer == "ct2mri-node" and first.ManufacturerModelName == MODEL.name
    assert list(first.SoftwareVersions) == ["ct2mri-node 0.1.0", "ct2mri-test 0.1.0"]


@pytest.mark.parametrize("name, charset", [
    ("Müller^Jörg", "ISO_IR 100"),
    ("Müller^Jörg=ミュラー", "ISO_IR 192"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
])
def test_patient_and_study_bytes_are_copied(tmp_path: Path, hu: np.ndarray, name: str,
                                            charset: object) -> None:
    ct = ct_volume(tmp_path, hu, patient_name=name, character_set=charset,
                 study_description="Kopf Untersuchung äöü" if charset != ["", "ISO 2022 IR 87"] else "頭部")
    out = encode_series(ct, translation_result(hu.shape), EncodeOptions(contribution_datetime=WHEN))
    assert_valid_datasets(out[:1], tmp_path / "mr")
    mr_file, ct_file = tmp_path / "mr" / "check00000.dcm", next((tmp_path / "ct").iterdir())
    mr, src = pydicom.dcmread(mr_file), pydicom.dcmread(ct_file)
    for tag in (0x00080005, 0x00100010, 0x00100020, 0x00081030, 0x0020000D, 0x00080020,
                0x00080050, 0x00100030, 0x00100040):
        assert mr.get_item(tag).value == src.get_item(tag).value, hex(tag)
    assert str(mr.PatientName) == name


def test_lossy_source_and_watermark_option(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu)
    ct.lossy, ct.lossy_methods = True, ("ISO_10918_1",)
    (ds,) = encode_series(ct, translation_result(hu.shape), EncodeOptions(burned_in_watermark=True))[:1]
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert ds.BurnedInAnnotation == "YES"


def test_same_inputs_same_uids_and_new_uids_for_new_settings(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu)
    a = encode_series(ct, translation_result(hu.shape))
    b = encode_series(ct, translation_result(hu.shape))
    c = encode_series(ct, translation_result(hu.shape, seed=1))
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].SeriesInstanceUID != c[0].SeriesInstanceUID
    # the refine sampler's t0 changes the pixels, so it enters the UIDs like the overlap does
    for change in ({"t0": 100}, {"overlap": 0.25}):
        other = translation_result(hu.shape)
        other.settings = dataclasses.replace(other.settings, **change)
        assert encode_series(ct, other)[0].SeriesInstanceUID != a[0].SeriesInstanceUID, change


def test_derivation_says_when_the_output_is_the_one_pass_estimate(tmp_path: Path, hu: np.ndarray) -> None:
    """The refine sampler's single evaluation is the network's estimate, not a denoising chain: the
    derivation says so, and names t0 when there are DDIM steps (issue 23)."""
    ct = ct_volume(tmp_path, hu)
    result = translation_result(hu.shape)
    result.settings = dataclasses.replace(result.settings, sampler="refine", steps=1, t0=400)
    (one,) = encode_series(ct, result)[:1]
    assert "one-pass estimate" in one.DerivationDescription and "1 steps" in one.DerivationDescription
    result.settings = dataclasses.replace(result.settings, steps=2, t0=50)
    (two,) = encode_series(ct, result)[:1]
    assert "one-pass" not in two.DerivationDescription and "t0 50" in two.DerivationDescription


def test_result_off_the_grid_is_refused(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu)
    with pytest.raises(ModelError, match="grid"):
        encode_series(ct, translation_result((hu.shape[0], 8, 8)))
    bad = translation_result(hu.shape)
    bad.mr = bad.mr.astype(np.uint16) | np.uint16(4096)
    with pytest.raises(ModelError, match="0..4095"):
        encode_series(ct, bad)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="SYNTHETIC MR"):
        EncodeOptions(description_prefix="MR")


def test_deliver_and_pipeline_do_not_import_torch() -> None:
    code = ("import sys, ct2mri_node.deliver.encode, ct2mri_node.jobs.pipeline, "
            "ct2mri_node.volume.assemble; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_legacy_converted_multiframe_source(tmp_path: Path, hu: np.ndarray) -> None:
    import highdicom

    from ct2mri_node.training.ct_dicom import ct_series_datasets

    frames = ct_series_datasets(hu, (2.5, 0.7, 0.9))
    multi = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        frames, series_instance_uid="1.2.3.4", series_number=5, sop_instance_uid="1.2.3.4.1",
        instance_number=1)
    ct = assemble([multi])
    assert np.array_equal(ct.hu, np.rint(hu))
    out = assert_valid_datasets(encode_series(ct, translation_result(hu.shape)), tmp_path / "mr")
    refs = [(d.SourceImageSequence[0].ReferencedSOPInstanceUID,
             int(d.SourceImageSequence[0].ReferencedFrameNumber)) for d in out]
    assert {uid for uid, _ in refs} == {"1.2.3.4.1"}
    assert sorted(n for _, n in refs) == list(range(1, hu.shape[0] + 1))
    assert len(out[0].ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 1


def test_each_instance_references_only_its_own_source(tmp_path: Path, hu: np.ndarray) -> None:
    """ReferencedSeriesSequence > ReferencedInstanceSequence names exactly the instance's own
    source slice (the one in its SourceImageSequence), never the rest of the series."""
    ct = ct_volume(tmp_path, hu)
    out = encode_series(ct, translation_result(hu.shape))
    assert len(out) == len(ct.slices) == hu.shape[0]
    for ds, source in zip(out, ct.slices, strict=True):
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == ct.series_instance_uid
        (item,) = series.ReferencedInstanceSequence
        (image,) = ds.SourceImageSequence
        assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (
            image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == (
            source.sop_class_uid, source.sop_instance_uid)


def test_encoded_bytes_per_instance_do_not_grow_with_the_series(tmp_path: Path) -> None:
    """Instance 1 of a 200-slice series has exactly the bytes of instance 1 of the same CT's
    first 20 slices (MR UIDs, which depend on every slice, set alike): encoding is linear."""
    from ct2mri_node.deliver.encode import FileEncoder

    hu = phantom_hu(200, 8, 8)
    result = translation_result(hu.shape)
    sizes = {}
    for count in (20, 200):
        ct = ct_volume(tmp_path / str(count), hu[:count])
        short = dataclasses.replace(result, mr=result.mr[:count])
        datasets = encode_series(ct, short, EncodeOptions(contribution_datetime=WHEN))
        encoder = FileEncoder()
        files = []
        for ds in (datasets[0], datasets[-1]):
            ds.SeriesInstanceUID = "1.2.3"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
            files.append(encoder.encode(ds))
        sizes[count] = files
    assert sizes[20][0] == sizes[200][0]
    assert abs(len(sizes[200][1]) - len(sizes[200][0])) < 64   # the last one is no larger either
