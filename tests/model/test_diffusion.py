"""Scheduler regression with analytic fake models (pinned numbers) and sampler selection."""

from __future__ import annotations

import math

import pytest
import torch

from ct2mri_node.errors import ModelError
from ct2mri_node.model.diffusion import (
    sampling_plan, scheduler_config, trailing_timesteps, training_scheduler, training_target,
)


def exact_v(x_t: torch.Tensor, t: int, x0: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """The true v for a data distribution concentrated on ``x0``."""
    a = alphas[t]
    eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def test_pinned_schedule_and_timesteps() -> None:
    plan = sampling_plan(scheduler_config(), "ddim", 20)
    assert plan.timesteps.tolist() == list(range(999, 0, -50))
    alphas = plan.scheduler.alphas_cumprod
    assert float(alphas[500]) == pytest.approx(0.4922853, abs=1e-6)
    assert float(alphas[999]) == pytest.approx(2.42889e-09, rel=1e-3)
    assert plan.eta == 0.0


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_ddim_with_the_exact_v_recovers_x0(steps: int) -> None:
    plan = sampling_plan(scheduler_config(), "ddim", steps)
    alphas = plan.scheduler.alphas_cumprod
    x0 = torch.linspace(-0.9, 0.9, 8).reshape(1, 1, 2, 2, 2)
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for t in plan.timesteps.tolist():
        x = plan.step(exact_v(x, t, x0, alphas), t, x, None)
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)


def test_one_ddim_step_with_a_zero_model_matches_the_formula() -> None:
    plan = sampling_plan(scheduler_config(), "ddim", 20)
    alphas = plan.scheduler.alphas_cumprod
    x = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    out = plan.step(torch.zeros_like(x), 999, x, None)
    a, a_prev = alphas[999], alphas[949]
    factor = float(a_prev.sqrt() * a.sqrt() + (1 - a_prev).sqrt() * (1 - a).sqrt())
    assert factor == pytest.approx(math.sqrt(1 - float(a_prev)), abs=1e-4)
    torch.testing.assert_close(out, factor * x)


def test_ddpm_sampler_is_stochastic_and_seeded() -> None:
    plan = sampling_plan(scheduler_config(), "ddpm", 10)
    x = torch.zeros(1, 1, 2, 2, 2)
    first = plan.step(torch.zeros_like(x), 999, x, torch.Generator().manual_seed(1))
    again = plan.step(torch.zeros_like(x), 999, x, torch.Generator().manual_seed(1))
    other = plan.step(torch.zeros_like(x), 999, x, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_full_ddpm_chain_uses_monai_ddpm() -> None:
    plan = sampling_plan(scheduler_config(), "ddpm", 1000)
    assert type(plan.scheduler).__name__ == "DDPMScheduler"
    assert plan.timesteps[0] == 999 and plan.timesteps[-1] == 0


def test_training_target_is_v() -> None:
    scheduler = training_scheduler(scheduler_config())
    x0, noise, t = torch.ones(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 2.0), torch.tensor([500])
    a = scheduler.alphas_cumprod[500]
    expected = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(training_target(scheduler, x0, noise, t), expected)


def test_trailing_timesteps_for_uneven_counts() -> None:
    assert trailing_timesteps(1000, 3).tolist() == [999, 666, 333]


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 20), ("ddim", 0), ("ddim", 1001)])
def test_invalid_sampling_settings(sampler: str, steps: int) -> None:
    with pytest.raises(ModelError):
        sampling_plan(scheduler_config(), sampler, steps)


def test_strided_ddpm_steps_stay_finite() -> None:
    plan = sampling_plan(scheduler_config(), "ddpm", 2)
    x = torch.randn(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    for t in plan.timesteps.tolist():
        x = plan.step(torch.zeros_like(x), t, x, gen)
    assert torch.isfinite(x).all()
