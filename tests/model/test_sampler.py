"""Sliding-window inference without seams, and seeded, reproducible translation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ct2mri_node.errors import InputError, ModelError
from ct2mri_node.model.sampler import EvalCounter, WindowSpec, windowed
from ct2mri_node.model.translator import TranslationSettings, Translator


class SpatialIdentity(nn.Module):
    """Returns its first channel: identity in space, so any seam would show."""

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, :1] * 1.0


def test_constant_in_constant_out() -> None:
    counter = EvalCounter()
    volume = torch.full((1, 2, 37, 45, 29), 0.7)
    out = windowed(SpatialIdentity(), volume, WindowSpec((16, 16, 16), overlap=0.25), counter)
    assert out.shape == (1, 1, 37, 45, 29)
    torch.testing.assert_close(out, torch.full_like(out, 0.7))
    assert counter.count > 8  # really patch-wise


def test_identity_net_reproduces_a_gradient_without_seams() -> None:
    z = torch.linspace(-1, 1, 40).reshape(1, 1, 40, 1, 1).expand(1, 1, 40, 33, 20).contiguous()
    out = windowed(SpatialIdentity(), z, WindowSpec((16, 16, 16), overlap=0.5), EvalCounter())
    torch.testing.assert_close(out, z, atol=1e-5, rtol=0)


def test_same_seed_same_output_other_seed_differs(tiny_checkpoints: dict[str, Path], small_ct: np.ndarray) -> None:
    ckpt = tiny_checkpoints["enhanced"]
    first = Translator(ckpt, TranslationSettings(steps=4, seed=3)).translate(small_ct, (3.0, 1.0, 1.0))
    again = Translator(ckpt, TranslationSettings(steps=4, seed=3)).translate(small_ct, (3.0, 1.0, 1.0))
    other = Translator(ckpt, TranslationSettings(steps=4, seed=4)).translate(small_ct, (3.0, 1.0, 1.0))
    assert np.array_equal(first.mr, again.mr)
    assert not np.array_equal(first.mr, other.mr)


@pytest.mark.parametrize("arch", ["enhanced", "ddpm", "unet"])
def test_translate_returns_a_12_bit_volume_on_the_ct_grid(
    arch: str, tiny_checkpoints: dict[str, Path], small_ct: np.ndarray
) -> None:
    steps: list[tuple[int, int]] = []
    translator = Translator(tiny_checkpoints[arch], TranslationSettings(steps=3, device="cpu"))
    result = translator.translate(small_ct, (3.0, 1.0, 1.0), progress=lambda i, n: steps.append((i, n)))
    assert result.mr.shape == small_ct.shape and result.mr.dtype == np.uint16
    assert result.mr.max() <= 4095 and result.mr[small_ct < -900].max() == 0
    assert result.device == "cpu" and result.model.architecture == arch
    assert len(result.model.weight_hash) == 64
    expected_steps = 1 if arch == "unet" else 3
    assert steps[-1] == (expected_steps, expected_steps)
    assert result.network_evaluations >= expected_steps


def test_ddpm_sampler_runs(tiny_checkpoints: dict[str, Path], small_ct: np.ndarray) -> None:
    result = Translator(tiny_checkpoints["ddpm"], TranslationSettings(steps=2, sampler="ddpm")).translate(
        small_ct, (3.0, 1.0, 1.0))
    assert result.mr.shape == small_ct.shape


def test_bad_input_is_an_input_error(tiny_checkpoints: dict[str, Path], small_ct: np.ndarray) -> None:
    translator = Translator(tiny_checkpoints["unet"])
    bad = small_ct.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        translator.translate(bad, (3.0, 1.0, 1.0))
    with pytest.raises(InputError, match="too small"):
        translator.translate(small_ct[:1], (3.0, 1.0, 1.0))
    with pytest.raises(InputError, match="3D"):
        translator.translate(small_ct[0], (3.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        translator.translate(small_ct, (3.0, 0.0, 1.0))


def test_bad_settings_are_model_errors(tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="sampler"):
        Translator(tiny_checkpoints["enhanced"], TranslationSettings(sampler="euler"))
    with pytest.raises(ModelError, match="device"):
        Translator(tiny_checkpoints["enhanced"], TranslationSettings(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            Translator(tiny_checkpoints["enhanced"], TranslationSettings(device="cuda"))
