"""Estimate-then-refine sampling: the explicit DDIM step, the start from the estimate, the mean of
N samples, seeds, the body crop, and the refine training objective."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler
from torch import nn

from ct2mri_node.errors import ModelError
from ct2mri_node.model.diffusion import (
    alphas_cumprod, ddim_step, refine_plan, refine_timesteps, sampling_config, scheduler_config,
)
from ct2mri_node.model.sampler import EvalCounter, WindowSpec, estimate, sample_refine
from ct2mri_node.model.trainer import Objective
from ct2mri_node.model.translator import TranslationSettings, Translator, body_box, sample_seeds

ALPHAS = alphas_cumprod(scheduler_config())


class ExactV(nn.Module):
    """The exact v for data concentrated on ``x0`` (a fixed volume): x0 is what any sampler must return."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        assert t is not None
        a = ALPHAS[int(t.reshape(-1)[0])]
        x_t, x0 = x[:, :1], self.x0.expand_as(x[:, :1])
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0


class ConditionalV(nn.Module):
    """v whose x0 estimate is the CT channel itself plus a little of the noisy input (not exact)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        assert t is not None
        a = ALPHAS[int(t.reshape(-1)[0])]
        x0 = 0.8 * x[:, 1:2] + 0.1 * x[:, :1]
        eps = (x[:, :1] - a.sqrt() * x0) / (1 - a).sqrt().clamp(min=1e-3)
        return a.sqrt() * eps - (1 - a).sqrt() * x0


def test_refine_timesteps() -> None:
    assert refine_timesteps(400, 1) == []
    assert refine_timesteps(400, 2) == [400]
    assert refine_timesteps(400, 3) == [400, 200]
    assert refine_timesteps(400, 5) == [400, 300, 200, 100]
    with pytest.raises(ModelError):
        refine_plan(scheduler_config(), sampling_config("refine"), 0)


def test_explicit_ddim_step_matches_monai_on_its_own_grid() -> None:
    """Where MONAI's step is right (previous timestep = t - T // n) both agree."""
    scheduler = DDIMScheduler(**scheduler_config(), set_alpha_to_one=True)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 1, 4, 4, 4, generator=gen), torch.randn(1, 1, 4, 4, 4, generator=gen)
    expected, _ = scheduler.step(v, 500, x, eta=0.0)
    ours = ddim_step(x, v, float(ALPHAS[500]), float(ALPHAS[450]))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_refine_with_the_exact_model_returns_x0(steps: int) -> None:
    x0 = torch.linspace(-0.9, 0.9, 6 * 7 * 5).reshape(1, 1, 6, 7, 5)
    ct = torch.zeros_like(x0)
    plan = refine_plan(scheduler_config(), sampling_config("refine"), steps)
    counter = EvalCounter()
    out = sample_refine(ExactV(x0), ct, plan, WindowSpec((6, 7, 5)), [0, 1], counter)  # one window: x0 is global
    torch.testing.assert_close(out, x0, atol=2e-4, rtol=0)


def test_estimate_is_x0_from_v_on_a_zero_input() -> None:
    ct = torch.linspace(-0.5, 0.5, 64).reshape(1, 1, 4, 4, 4)
    plan = refine_plan(scheduler_config(), sampling_config("refine"), 1)
    out = estimate(ConditionalV(), ct, plan, WindowSpec((4, 4, 4)), EvalCounter())
    torch.testing.assert_close(out, 0.8 * ct, atol=1e-4, rtol=0)


def test_samples_are_seeded_and_their_mean_is_returned() -> None:
    ct = torch.linspace(-0.5, 0.5, 216).reshape(1, 1, 6, 6, 6)
    plan = refine_plan(scheduler_config(), sampling_config("refine"), 3)
    spec = WindowSpec((6, 6, 6))
    run = lambda seeds: sample_refine(ConditionalV(), ct, plan, spec, seeds, EvalCounter())  # noqa: E731
    a, b = run([5]), run([6])
    assert torch.equal(a, run([5])) and not torch.equal(a, b)
    torch.testing.assert_close(run([5, 6]), (a + b) / 2, atol=1e-6, rtol=0)
    counter = EvalCounter()
    sample_refine(ConditionalV(), ct, plan, spec, [1, 2, 3, 4], counter)
    assert counter.count == 1 + 4 * 2  # one shared estimate, then 2 steps per sample


def test_sample_seeds_keep_the_first_and_differ() -> None:
    assert sample_seeds(7, 1) == [7]
    seeds = sample_seeds(7, 4)
    assert seeds[0] == 7 and len(set(seeds)) == 4 and seeds == sample_seeds(7, 4)


def test_body_box_adds_a_margin_and_stays_inside() -> None:
    mask = np.zeros((20, 30, 40), bool)
    mask[5:8, 10:20, 0:3] = True
    assert body_box(mask, 2) == (slice(3, 10), slice(8, 22), slice(0, 5))
    assert body_box(np.zeros((3, 4, 5), bool)) == (slice(0, 3), slice(0, 4), slice(0, 5))


def test_translator_uses_the_cards_sampler_and_steps(tiny_checkpoints: dict[str, Path], small_ct: np.ndarray) -> None:
    enhanced = Translator(tiny_checkpoints["enhanced"])
    assert enhanced.settings.sampler == "refine" and enhanced.settings.steps == 1
    ddpm = Translator(tiny_checkpoints["ddpm"])
    assert ddpm.settings.sampler == "ddim" and ddpm.settings.steps == 20
    with pytest.raises(ModelError, match="refine"):
        Translator(tiny_checkpoints["ddpm"], TranslationSettings(sampler="refine"))


def test_t0_override_is_resolved_recorded_and_changes_only_refined_samples(
        tiny_checkpoints: dict[str, Path], small_ct: np.ndarray) -> None:
    ckpt = tiny_checkpoints["enhanced"]
    card_t0 = Translator(ckpt).settings.t0
    assert card_t0 is not None and card_t0 != 50
    small = Translator(ckpt, TranslationSettings(steps=3, t0=50))
    assert small.settings.t0 == 50 and small._plan.timesteps == [50, 25]  # type: ignore[union-attr]
    spacing = (3.0, 1.0, 1.0)
    refined = Translator(ckpt, TranslationSettings(steps=2)).translate(small_ct, spacing)
    assert not np.array_equal(refined.mr, Translator(ckpt, TranslationSettings(steps=2, t0=50))
                              .translate(small_ct, spacing).mr)
    # the estimate alone does not visit t0: the same pixels whatever t0 says
    assert np.array_equal(Translator(ckpt, TranslationSettings(steps=1)).translate(small_ct, spacing).mr,
                          Translator(ckpt, TranslationSettings(steps=1, t0=50)).translate(small_ct, spacing).mr)
    assert Translator(tiny_checkpoints["ddpm"]).settings.t0 is None
    with pytest.raises(ModelError, match="refine sampler only"):
        Translator(tiny_checkpoints["ddpm"], TranslationSettings(t0=50))
    for bad in (0, 1000):
        with pytest.raises(ModelError, match="t0 must be between"):
            Translator(ckpt, TranslationSettings(steps=2, t0=bad))


def test_mean_of_samples_is_deterministic_and_differs_from_one(tiny_checkpoints: dict[str, Path],
                                                             small_ct: np.ndarray) -> None:
    ckpt = tiny_checkpoints["enhanced"]
    one = Translator(ckpt, TranslationSettings(steps=2, seed=3)).translate(small_ct, (3.0, 1.0, 1.0))
    mean = Translator(ckpt, TranslationSettings(steps=2, seed=3, samples=3)).translate(small_ct, (3.0, 1.0, 1.0))
    again = Translator(ckpt, TranslationSettings(steps=2, seed=3, samples=3)).translate(small_ct, (3.0, 1.0, 1.0))
    assert np.array_equal(mean.mr, again.mr) and not np.array_equal(one.mr, mean.mr)
    assert mean.network_evaluations > one.network_evaluations  # the estimate once, the steps per sample


def test_refine_objective_mixes_estimate_and_refinement_patches() -> None:
    objective = Objective("enhanced", scheduler_config(), sampling_config("refine", t0=300, estimate_fraction=1.0))
    ct = torch.linspace(-0.5, 0.5, 4 * 512).reshape(4, 1, 8, 8, 8)
    mr = 0.8 * ct
    # every patch an estimate patch: ConditionalV's estimate is exactly 0.8 * ct, so the loss is ~0
    loss = objective.loss(ConditionalV(), ct, mr, torch.Generator().manual_seed(0))
    assert float(loss) < 1e-3
    refine_only = Objective("enhanced", scheduler_config(), sampling_config("refine", t0=300, estimate_fraction=0.0))
    assert float(refine_only.loss(ConditionalV(), ct, mr, torch.Generator().manual_seed(0))) > 1e-3


def test_test_time_flips_run_each_sample_on_its_flip_and_undo_it(tiny_checkpoints: dict[str, Path]) -> None:
    """Sample i of N is the one-sample translation of the CT flipped along FLIPS[i], flipped back;
    the first is the plain translation (so samples=1 is unchanged), and the flips make a refine
    model's single-evaluation samples differ (the spread then holds their disagreement)."""
    from ct2mri_node.model.uncertainty import FLIPS

    ckpt = tiny_checkpoints["enhanced"]
    ct = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (1, 4, 10, 14, 18)).astype(np.float32))
    many = Translator(ckpt, TranslationSettings(steps=1, samples=4, device="cpu"))
    one = Translator(ckpt, TranslationSettings(steps=1, samples=1, device="cpu"))
    spec = WindowSpec(many._ckpt.card.patch_size, 0.5, 2)
    samples = many._run(ct, spec, EvalCounter(), None)
    assert samples.shape == (4, 1, 10, 14, 18)
    for i, flip in enumerate(FLIPS):
        dims = [axis + 2 for axis in flip]
        alone = one._run(torch.flip(ct, dims) if dims else ct, spec, EvalCounter(), None)
        assert torch.equal(samples[i:i + 1], torch.flip(alone, dims) if dims else alone), flip
        if i:
            assert not torch.equal(samples[i], samples[0]), flip
