"""UIDs that never lie: same job -> same UIDs; anything that changes the MR's pixels -> new UIDs.

Unit tests of ``deliver/uids.py``, then the encoder end to end: a CT written to files,
assembled (which digests each slice's pixels) and encoded with a fixed translation result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ct2mri_node.deliver import encode
from ct2mri_node.deliver.encode import encode_series
from ct2mri_node.deliver.uids import (
    OutputUids,
    SourceKey,
    derive_output_uids,
    is_valid_uid,
    sources_digest,
    uid_from,
)
from ct2mri_node.model.translator import Translator
from ct2mri_node.volume.assemble import assemble, read_series
from dicom_checks import SPACING, ct_volume, translation_result

SOURCES = [SourceKey(f"1.2.3.{i}", f"{i:064x}", (0.0, 0.0, 2.5 * i)) for i in range(1, 6)]
WEIGHTS = "ab" * 32
SETTINGS = ("ddim", 20, 0)


def _uids(sources: list[SourceKey] = SOURCES, *, series: str = "1.2.3", weights: str = WEIGHTS,
          settings: tuple[object, ...] = SETTINGS, version: str = "0.1.0",
          precision: str = "cpu-fp32") -> OutputUids:
    return derive_output_uids(series, sources, weights, settings, software_version=version,
                              precision=precision)


def _all(uids: OutputUids) -> set[str]:
    return {uids.series_instance_uid, *uids.sop_instance_uids}


def test_same_inputs_same_uids() -> None:
    a = _uids()
    b = _uids(list(SOURCES))
    assert a == b
    assert len(set(a.sop_instance_uids)) == len(SOURCES)
    assert a.series_instance_uid not in a.sop_instance_uids
    assert all(is_valid_uid(u) and u.startswith("2.25.") for u in _all(a))


def test_one_changed_slice_changes_every_uid() -> None:
    base = _uids()
    changed = list(SOURCES)
    changed[2] = dataclasses.replace(changed[2], pixel_digest="f" * 64)
    other = _uids(changed)
    assert not _all(base) & _all(other)   # the series UID and every instance UID are new


@pytest.mark.parametrize("change", [
    {"series": "1.2.4"}, {"sources": SOURCES[:-1]}, {"weights": "cd" * 32},
    {"settings": ("ddim", 21, 0)}, {"settings": ("ddim", 20, 1)}, {"settings": ("ddpm", 20, 0)},
    {"version": "0.1.1"}, {"precision": "cuda-bf16"}, {"precision": "cuda-fp16"},
    {"sources": [dataclasses.replace(SOURCES[0], position=(0.0, 0.0, 1.0)), *SOURCES[1:]]},
])
def test_each_input_changes_the_series_uid(change: dict[str, object]) -> None:
    assert _uids().series_instance_uid != _uids(**change).series_instance_uid  # type: ignore[arg-type]


def test_digest_ignores_arrival_order() -> None:
    assert sources_digest(SOURCES) == sources_digest(reversed(SOURCES))
    assert sources_digest(SOURCES) != sources_digest(SOURCES[:-1])


def test_no_sources_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        _uids([])


def test_uid_syntax() -> None:
    assert uid_from("x", 1) == uid_from("x", 1) != uid_from("x", "1")
    assert is_valid_uid("1.2.840.10008.1.2")
    for bad in ("", "1..2", "1.02", "../etc", "1.2.a", "1." * 40):
        assert not is_valid_uid(bad)


# --- the encoder: pixels read from files ---------------------------------------------------------

def _mr_uids(datasets: list[Dataset]) -> tuple[str, list[str]]:
    (series,) = {str(d.SeriesInstanceUID) for d in datasets}
    return series, [str(d.SOPInstanceUID) for d in datasets]


def test_changed_pixels_of_one_instance_change_every_uid(tmp_path: Path, hu: np.ndarray) -> None:
    """Slice 3 re-written under its own SOP Instance UID with other pixels: a new MR series."""
    result = translation_result(hu.shape)
    first = ct_volume(tmp_path / "a", hu)
    again = ct_volume(tmp_path / "b", hu)
    changed_hu = hu.copy()
    changed_hu[3, 5, 5] += 1.0
    changed = ct_volume(tmp_path / "c", changed_hu)
    assert [s.sop_instance_uid for s in first.slices] == [s.sop_instance_uid for s in changed.slices]
    digests = [a.pixel_digest == b.pixel_digest for a, b in zip(first.slices, changed.slices, strict=True)]
    assert digests == [k != 3 for k in range(hu.shape[0])]
    series_a, instances_a = _mr_uids(encode_series(first, result))
    assert _mr_uids(encode_series(again, result)) == (series_a, instances_a)
    series_c, instances_c = _mr_uids(encode_series(changed, result))
    assert series_c != series_a
    assert not set(instances_c) & set(instances_a)


def test_same_pixels_in_another_transfer_syntax_keep_the_uids(tmp_path: Path, hu: np.ndarray) -> None:
    """The digest is of the decoded pixels: a lossless re-encoding is the same input."""
    result = translation_result(hu.shape)
    plain = ct_volume(tmp_path / "a", hu)
    rle = ct_volume(tmp_path / "b", hu, transfer_syntax=pydicom.uid.RLELossless)
    jls = ct_volume(tmp_path / "c", hu, transfer_syntax=pydicom.uid.JPEGLSLossless)
    assert _mr_uids(encode_series(plain, result)) == _mr_uids(encode_series(rle, result)) \
        == _mr_uids(encode_series(jls, result))


def test_changed_rescale_changes_the_uids(tmp_path: Path, hu: np.ndarray) -> None:
    """Same stored bytes, another RescaleIntercept: other HU, so other UIDs."""
    ct = ct_volume(tmp_path, hu)
    datasets = read_series(sorted((tmp_path / "ct").iterdir()), defer_size_bytes=None)
    for ds in datasets:
        ds.RescaleIntercept = str(float(ds.RescaleIntercept) + 10)
    shifted = assemble(datasets)
    assert all(a.pixel_digest != b.pixel_digest for a, b in zip(ct.slices, shifted.slices, strict=True))
    result = translation_result(hu.shape)
    assert _mr_uids(encode_series(ct, result))[0] != _mr_uids(encode_series(shifted, result))[0]


def test_precision_device_and_version_change_the_uids(tmp_path: Path, hu: np.ndarray,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ct = ct_volume(tmp_path, hu)
    result = translation_result(hu.shape)
    assert result.precision == "fp32"    # the default of a TranslationResult built by hand
    base = _mr_uids(encode_series(ct, result))
    variants = [
        dataclasses.replace(result, device="cuda:0", precision="bf16"),
        dataclasses.replace(result, device="cuda:0", precision="fp16"),
        dataclasses.replace(result, device="cuda:0", precision="fp32"),   # GPU kernels round otherwise
    ]
    seen = [base] + [_mr_uids(encode_series(ct, v)) for v in variants]
    monkeypatch.setattr(encode, "__version__", "999.0.0")
    seen.append(_mr_uids(encode_series(ct, result)))
    assert len({series for series, _ in seen}) == len(seen)
    instances = [set(i) for _, i in seen]
    assert all(not a & b for k, a in enumerate(instances) for b in instances[k + 1:])


def test_digest_of_multiframe_frames(hu: np.ndarray) -> None:
    """A frame of a multi-frame CT is digested as its decoded frame: equal frames, equal digest."""
    import highdicom

    from ct2mri_node.training.ct_dicom import ct_series_datasets

    same = hu.copy()
    same[1] = same[0]
    frames = ct_series_datasets(same, SPACING)
    multi = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        frames, series_instance_uid="1.2.3.4", series_number=5, sop_instance_uid="1.2.3.4.1",
        instance_number=1)
    ct = assemble([multi])
    digests = [s.pixel_digest for s in ct.slices]
    assert digests[0] == digests[1] and len(set(digests)) == hu.shape[0] - 1
    assert all(len(d) == 64 for d in digests)


# --- the translator's side: precision and the CUDA determinism switches ---------------------------

def test_translator_reports_its_precision(translator: Translator, hu: np.ndarray) -> None:
    result = translator.translate(hu, SPACING)
    assert (result.device, result.precision) == ("cpu", "fp32") == (translator.device, translator.precision)


def test_deterministic_switches_are_scoped_to_the_call() -> None:
    """CUDA sampling runs with deterministic algorithms and cuDNN settings that are restored
    afterwards; cuBLAS' workspace is fixed before CUDA starts. (The switches are torch's own
    flags, so this runs without a GPU.)"""
    import os

    import torch

    from ct2mri_node.model.translator import deterministic

    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic(torch.device("cuda", 0)):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    with deterministic(torch.device("cpu")):   # the CPU path changes nothing
        assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark) == before
