"""The uncertainty map (Parametric Map) and QA image (Secondary Capture): valid DICOM (pydicom
strict round trip, dciodvfy without errors), labelled synthetic, on the CT's grid, deterministic."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_checks import assert_valid_datasets, ct_volume, translation_result

from ct2mri_node.deliver.companions import (
    MAP_DESCRIPTION,
    QA_DESCRIPTION,
    CompanionOptions,
    encode_companions,
)
from ct2mri_node.deliver.encode import encode_series
from ct2mri_node.errors import ModelError
from ct2mri_node.model.translator import TranslationResult
from ct2mri_node.volume.assemble import read_series


def _sampled(shape: tuple[int, ...], samples: int = 4) -> TranslationResult:
    result = translation_result(shape)
    sd = np.random.default_rng(1).random(shape).astype(np.float32) * 80.0
    sd[:, :2] = 0.0
    return dataclasses.replace(result, settings=dataclasses.replace(result.settings, samples=samples),
                               uncertainty=sd)


@pytest.mark.parametrize("name, charset", [("Müller^Jörg", "ISO_IR 100"), ("Müller^Jörg=ミュラー", "ISO_IR 192")])
def test_both_companions_are_valid_dicom_and_labelled(tmp_path: Path, hu: np.ndarray, name: str,
                                                      charset: str) -> None:
    ct = ct_volume(tmp_path, hu, patient_name=name, character_set=charset)
    result = _sampled(hu.shape)
    mr = encode_series(ct, result)
    ct_datasets = read_series(sorted((tmp_path / "ct").iterdir()))
    pm, sc = encode_companions(ct, result, mr, CompanionOptions(True, True), ct_datasets=ct_datasets)
    # Explicit VR, like the MR: a peer whose dictionary lacks SyntheticData still reads its VR
    assert pm.file_meta.TransferSyntaxUID == sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    pm_back, sc_back = assert_valid_datasets([pm, sc], tmp_path / "check")
    for ds in (pm_back, sc_back):
        assert ds.SyntheticData == "YES" and "NOT FOR DIAGNOSTIC USE" in ds.ImageComments
        assert ds.StudyInstanceUID == mr[0].StudyInstanceUID and str(ds.PatientName) == name
        assert ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
        assert "samples" in ds.DerivationDescription
    assert pm_back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and pm_back.SeriesDescription == MAP_DESCRIPTION
    assert sc_back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc_back.SeriesDescription.startswith(QA_DESCRIPTION) and sc_back.BurnedInAnnotation == "YES"
    assert pm_back.FrameOfReferenceUID == ct.frame_of_reference_uid
    # float pixels, one frame per CT slice, each frame with its CT slice's position and values
    # (highdicom stores the frames in its own order, so they are matched by position)
    positions = [tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                 for f in pm_back.PerFrameFunctionalGroupsSequence]
    index = {tuple(round(v, 3) for v in s.position): i for i, s in enumerate(ct.slices)}
    order = [index[tuple(round(v, 3) for v in p)] for p in positions]
    assert sorted(order) == list(range(len(ct.slices)))
    assert np.array_equal(pm_back.pixel_array, result.uncertainty[order])
    mapping = pm_back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "[arb'U]"
    quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (quantity.CodeValue, quantity.CodingSchemeDesignator) == ("386136009", "SCT")
    sources = {str(i.ReferencedSOPInstanceUID) for i in pm_back.SourceImageSequence}
    assert {str(d.SOPInstanceUID) for d in mr} <= sources
    referenced = {str(s.SeriesInstanceUID) for s in pm_back.ReferencedSeriesSequence}
    assert referenced == {ct.series_instance_uid, str(mr[0].SeriesInstanceUID)}


def test_qa_image_without_samples_has_two_rows_and_map_needs_samples(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu)
    single = translation_result(hu.shape)
    mr = encode_series(ct, single)
    (sc,) = encode_companions(ct, single, mr, CompanionOptions(qa_capture=True))
    (with_map,) = encode_companions(ct, _sampled(hu.shape), mr, CompanionOptions(qa_capture=True))
    assert sc.Rows < with_map.Rows and sc.Columns == with_map.Columns   # the third row is the map
    assert_valid_datasets([sc], tmp_path / "check")
    with pytest.raises(ModelError, match="samples >= 2"):
        encode_companions(ct, single, mr, CompanionOptions(uncertainty_map=True))
    off_grid = dataclasses.replace(_sampled(hu.shape), uncertainty=np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ModelError, match="CT's grid"):
        encode_companions(ct, off_grid, mr, CompanionOptions(uncertainty_map=True))


def test_companion_uids_follow_the_mr_series(tmp_path: Path, hu: np.ndarray) -> None:
    ct = ct_volume(tmp_path, hu)
    result = _sampled(hu.shape)
    both = CompanionOptions(True, True)
    first = encode_companions(ct, result, encode_series(ct, result), both)
    again = encode_companions(ct, result, encode_series(ct, result), both)
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    assert [d.SeriesInstanceUID for d in first] == [d.SeriesInstanceUID for d in again]
    other = dataclasses.replace(result, settings=dataclasses.replace(result.settings, seed=9))
    changed = encode_companions(ct, other, encode_series(ct, other), both)
    assert not {d.SOPInstanceUID for d in first} & {d.SOPInstanceUID for d in changed}


def test_companions_do_not_import_torch() -> None:
    code = "import sys, ct2mri_node.deliver.companions; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
