"""Several samples, the uncertainty map (Parametric Map) and the QA image (Secondary Capture):
over real associations to a capture SCP and a folder, and through the real translator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from nodekit import (
    CaptureSCP,
    jobs_in,
    make_ct_series,
    node_config,
    node_config_data,
    send,
    started_nodes,
    wait_for,
)
from torch import nn

from ct2mri_node.config import NodeConfig, parse_config
from ct2mri_node.deliver.companions import (
    MAP_DESCRIPTION,
    QA_DESCRIPTION,
    CompanionOptions,
)
from ct2mri_node.errors import ConfigError, ModelError
from ct2mri_node.jobs.pipeline import PipelineOptions, run_pipeline
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.node import Node
from ct2mri_node.volume.assemble import read_series

PM = "1.2.840.10008.5.1.4.1.1.30"
SC = "1.2.840.10008.5.1.4.1.1.7"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def sampling_translator(tiny_checkpoint: Path) -> Translator:
    """The tiny model with 3 samples of 2 evaluations each (the second is a stochastic DDIM step)."""
    return Translator(tiny_checkpoint, TranslationSettings(steps=2, samples=3, device="cpu"))


@pytest.fixture
def start_sampling_node(sampling_translator: Translator) -> Iterator[Callable[[NodeConfig], Node]]:
    with started_nodes(sampling_translator) as start:
        yield start


def _outputs_config(tmp_path: Path, destinations: list[dict[str, object]]) -> NodeConfig:
    return node_config(tmp_path, destinations=destinations,
                       model={"checkpoint": "bundled", "device": "cpu", "steps": 2, "samples": 3},
                       outputs={"uncertainty_map": True, "qa_capture": True})


def _by_class(datasets: list[pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


def _along(position: object, normal: np.ndarray) -> float:
    """A slice's place along the normal of its plane, in mm (0.01 mm steps)."""
    return round(float(np.dot([float(v) for v in position], normal)), 2)  # type: ignore[attr-defined]


def test_node_sends_mr_uncertainty_map_and_qa_image_in_one_study(
    start_sampling_node: Callable[[NodeConfig], Node], capture: CaptureSCP, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    node = start_sampling_node(_outputs_config(
        tmp_path, [capture.destination(), {"name": "local", "type": "folder", "path": str(outbox)}]))
    ct_paths = make_ct_series(tmp_path / "ct", seed=3, taper=0.5)   # a cone: each slice has its own air
    send(node.port, ct_paths)
    (job,) = wait_for(lambda: jobs_in(node, "done", "failed"), 180)
    assert job.state == "done", job.reason
    assert [(d.state, d.reason) for d in job.deliveries] == [("done", None), ("done", None)]

    got = _by_class(capture.datasets)
    assert sorted(got) == sorted([MR, PM, SC]) and len(got[MR]) == len(ct_paths)
    (pm,), (sc,) = got[PM], got[SC]
    ct = [pydicom.dcmread(p) for p in ct_paths]
    ct_series, study, frame = ct[0].SeriesInstanceUID, ct[0].StudyInstanceUID, ct[0].FrameOfReferenceUID
    mr_series = got[MR][0].SeriesInstanceUID
    for ds in (pm, sc, *got[MR]):
        assert ds.StudyInstanceUID == study and ds.PatientID == ct[0].PatientID
        assert ds.SyntheticData == "YES"
    assert len({pm.SeriesInstanceUID, sc.SeriesInstanceUID, mr_series}) == 3

    # the map: the CT's grid and frame of reference, one frame per CT slice, float pixels
    assert pm.FrameOfReferenceUID == frame
    assert pm.SeriesDescription == MAP_DESCRIPTION
    assert int(pm.NumberOfFrames) == len(ct) and (pm.Rows, pm.Columns) == (ct[0].Rows, ct[0].Columns)
    positions = sorted(tuple(float(v) for v in d.ImagePositionPatient) for d in ct)
    frame_positions = sorted(tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                             for f in pm.PerFrameFunctionalGroupsSequence)
    assert np.allclose(frame_positions, positions)
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == pytest.approx(
        [float(v) for v in ct[0].ImageOrientationPatient])
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(
        [float(v) for v in ct[0].PixelSpacing])
    referenced = {str(item.SeriesInstanceUID) for item in pm.ReferencedSeriesSequence}
    assert {str(ct_series), str(mr_series)} <= referenced
    mapping = shared.RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert "samples" in mapping.LUTExplanation
    sd = pm.pixel_array
    assert sd.dtype == np.float32 and np.isfinite(sd).all() and sd.min() >= 0.0
    # each map frame against the CT slice at the same position (frames are matched by their
    # Plane Position, never by their order): no spread in the CT's air, spread in its body
    normal = np.cross(*np.reshape([float(v) for v in ct[0].ImageOrientationPatient], (2, 3)))
    ct_at = {_along(d.ImagePositionPatient, normal): d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
             for d in ct}
    sd_at = {_along(f.PlanePositionSequence[0].ImagePositionPatient, normal): sd[i]
             for i, f in enumerate(pm.PerFrameFunctionalGroupsSequence)}
    assert sorted(sd_at) == sorted(ct_at)
    for where, hu in ct_at.items():
        air = hu < -500
        assert air.any() and (~air).any()
        assert np.all(sd_at[where][air] == 0.0), f"spread in air at {where} mm"
        assert sd_at[where][~air].max() > 0.0, f"no spread in the body at {where} mm"   # random tiny model
    assert {d.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue
            for d in (pm, sc, got[MR][0])} == {"109100"}

    # the QA image: a labelled Secondary Capture of the synthetic series
    assert sc.SeriesDescription.startswith(QA_DESCRIPTION) and sc.BurnedInAnnotation == "YES"
    assert sc.pixel_array.ndim == 2 and sc.pixel_array.max() > 0
    assert {str(i.SeriesInstanceUID) for i in sc.RelatedSeriesSequence} == {str(ct_series), str(mr_series)}

    # the folder destination: each series in its own folder
    folders = {p.name: sorted(p.iterdir()) for p in outbox.iterdir()}
    assert set(folders) == {str(mr_series), str(pm.SeriesInstanceUID), str(sc.SeriesInstanceUID)}
    assert len(folders[str(mr_series)]) == len(ct_paths)
    assert folders[str(pm.SeriesInstanceUID)][0].name.startswith("PM00001_")
    assert folders[str(sc.SeriesInstanceUID)][0].name.startswith("SC00001_")


def test_destination_without_companion_classes_still_gets_the_mr(
    start_sampling_node: Callable[[NodeConfig], Node], tmp_path: Path
) -> None:
    mr_only = CaptureSCP(ae_title="MRONLY", companions=False).start()
    try:
        node = start_sampling_node(_outputs_config(tmp_path, [mr_only.destination("mr-only")]))
        ct_paths = make_ct_series(tmp_path / "ct", seed=4)
        send(node.port, ct_paths)
        (job,) = wait_for(lambda: jobs_in(node, "done", "failed"), 180)
        assert job.state == "done", job.reason
        (delivery,) = job.deliveries
        assert delivery.state == "done"
        assert "skipped Parametric Map Storage" in (delivery.reason or "")
        assert "skipped Secondary Capture Image Storage" in (delivery.reason or "")
        assert sorted(_by_class(mr_only.datasets)) == [MR] and len(mr_only.datasets) == len(ct_paths)
    finally:
        mr_only.stop()


def test_same_input_gives_the_same_uids_and_pixels(sampling_translator: Translator, tmp_path: Path) -> None:
    ct_paths = make_ct_series(tmp_path / "ct", seed=5)
    options = PipelineOptions(companions=CompanionOptions(uncertainty_map=True, qa_capture=True))
    runs = [run_pipeline(read_series(ct_paths), sampling_translator, options) for _ in range(2)]
    uids = [[str(d.SOPInstanceUID) for d in r.all_datasets] for r in runs]
    assert uids[0] == uids[1] and len(uids[0]) == len(ct_paths) + 2
    assert [str(d.SeriesInstanceUID) for d in runs[0].companions] == \
        [str(d.SeriesInstanceUID) for d in runs[1].companions]
    assert runs[0].companions[0].FloatPixelData == runs[1].companions[0].FloatPixelData
    assert runs[0].companions[1].PixelData == runs[1].companions[1].PixelData
    assert np.array_equal(runs[0].translation.uncertainty, runs[1].translation.uncertainty)


class BoneAgreesNet(nn.Module):
    """A fake v-prediction network: where the CT (channel 1) is above 0 in [-1, 1] (HU > 488)
    it predicts v = -1e6, so x0 clips to exactly 1 whatever the noise: the samples agree there;
    elsewhere v = 0, so x0 follows the noisy input and the samples differ."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ct = x[:, 1:2]
        return torch.where(ct > 0.0, torch.full_like(ct, -1e6), torch.zeros_like(ct))


def test_map_is_zero_where_samples_agree_and_positive_where_they_differ(tiny_checkpoint: Path) -> None:
    translator = Translator(tiny_checkpoint, TranslationSettings(steps=3, samples=4, device="cpu"))
    translator._network = BoneAgreesNet()   # the sampler, post-processing and SD are the real ones
    _, y, x = np.mgrid[0:12, 0:40, 0:40]
    body = np.hypot(y - 20, x - 20) < 17
    hu = np.where(body, np.where(x < 20, 900.0, 40.0), -1000.0).astype(np.float32)
    result = translator.translate(hu, (4.0, 4.0, 4.0))   # the tiny model's own grid: no resampling
    sd = result.uncertainty
    assert sd is not None and sd.shape == hu.shape and sd.dtype == np.float32
    bone, soft = body & (x < 20), body & (x >= 20)
    assert np.all(sd[bone] == 0.0)
    assert np.all(sd[~body] == 0.0)
    assert (sd[soft] > 0.0).mean() > 0.5 and float(sd[soft].mean()) > 1.0   # MR grey levels


def test_one_sample_has_no_map_and_refine_needs_two_evaluations_beyond_the_flips(tiny_checkpoint: Path) -> None:
    hu = np.where(np.hypot(*np.mgrid[0:8, 0:24, 0:24][1:] - 12.0) < 9, 40.0, -1000.0).astype(np.float32)
    one = Translator(tiny_checkpoint, TranslationSettings(samples=1, device="cpu"))
    assert one.settings.steps == 1 and one.translate(hu, (4.0, 4.0, 4.0)).uncertainty is None
    # up to 4 samples the test-time flips make the deterministic estimates differ: the card's 1 evaluation
    assert Translator(tiny_checkpoint, TranslationSettings(samples=4, device="cpu")).settings.steps == 1
    # a 5th sample would repeat the first flip's estimate: 2 evaluations are used, an explicit 1 refused
    assert Translator(tiny_checkpoint, TranslationSettings(samples=5, device="cpu")).settings.steps == 2
    with pytest.raises(ModelError, match="steps 1 with samples 5.*would repeat earlier ones"):
        Translator(tiny_checkpoint, TranslationSettings(steps=1, samples=5, device="cpu"))


def test_uncertainty_map_without_samples_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"outputs\.uncertainty_map: needs model\.samples >= 2 "
                                          r"\(model\.samples is 1\)"):
        node_config(tmp_path, outputs={"uncertainty_map": True})
    with pytest.raises(ConfigError, match=r"outputs\.uncertainty_map: needs models\.head\.samples >= 2"):
        data = node_config_data(models={"head": {"samples": 1}, "pelvis": {"samples": 4}},
                                rules=[{"name": "all", "translate": "pelvis"}], outputs={"uncertainty_map": True})
        del data["model"]
        parse_config(data, tmp_path, "test")
    with pytest.raises(ConfigError, match=r"outputs\.qa: Extra inputs"):
        node_config(tmp_path, outputs={"qa": True})
    ok = node_config(tmp_path, outputs={"qa_capture": True})
    assert ok.outputs.qa_capture and not ok.outputs.uncertainty_map


def test_post_mapping_fitted_on_the_mean_is_the_mr_post_processing() -> None:
    from ct2mri_node.model import pre_post

    rng = np.random.default_rng(0)
    mean = rng.normal(size=(10, 20, 20)).astype(np.float32)
    mask = np.zeros(mean.shape, bool)
    mask[2:8, 4:16, 4:16] = True
    mapping = pre_post.PostMapping.fit(mean, mask)
    assert np.array_equal(mapping(mean), pre_post.postprocess_model_grid(mean, mask))
    # a fixed mapping, not refitted on what it maps: a sample that agrees with the mean in the
    # first half of the volume maps that half exactly as the mean does, though its other half
    # (brighter, spread out) would move the percentiles and the histogram of a refit
    sample = mean.copy()
    sample[5:] = 3.0 * mean[5:] + 2.0
    assert np.array_equal(mapping(sample)[:5], mapping(mean)[:5])
    assert not np.allclose(pre_post.postprocess_model_grid(sample, mask)[:5], mapping(mean)[:5])   # a refit would differ


def test_batched_samples_match_one_by_one_within_rounding(tiny_checkpoint: Path) -> None:
    from ct2mri_node.model.sampler import EvalCounter, WindowSpec, refine_samples
    from ct2mri_node.model.translator import sample_seeds

    translator = Translator(tiny_checkpoint, TranslationSettings(steps=3, samples=3, device="cpu"))
    ct = torch.linspace(-1.0, 1.0, 4 * 20 * 24 * 24).reshape(1, 4, 20, 24, 24)  # one channel per CT window
    spec = WindowSpec((16, 16, 16), 0.25, 2)
    seeds = sample_seeds(0, 3)
    counts = EvalCounter(), EvalCounter()
    together = refine_samples(translator._network, ct, translator._plan, spec, seeds, counts[0])
    alone = refine_samples(translator._network, ct, translator._plan, spec, seeds, counts[1], batch_samples=1)
    assert counts[0].count == counts[1].count
    # CPU convolutions round differently with the batch size: equal within float32 rounding,
    # far below one 12-bit grey level (1/4095 of the [-1, 1] range is 5e-4)
    assert float((together - alone).abs().max()) < 1e-5
    assert not torch.equal(together[0], together[1])
