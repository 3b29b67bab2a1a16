"""Noise schedule, training objective and scheduler construction (MONAI schedulers).

Choices, recorded in every checkpoint card (``scheduler`` section):

- **v-prediction** (Salimans & Ho 2022): the network predicts
  ``v = sqrt(a_t) * eps - sqrt(1 - a_t) * x0``. Its target has unit variance at every noise
  level, so the loss is well conditioned both near pure noise (where eps-prediction makes x0
  estimates explode) and near clean data (where x0-prediction is ill-posed); and x0 can be
  recovered stably at every step, which is what few-step DDIM needs (20 steps by default).
- **cosine schedule** (Nichol & Dhariwal 2021) over 1000 training steps: destroys information
  more gradually than a linear schedule at small resolutions such as our 32^3 CPU patches.
- Predicted x0 is clipped to [-1, 1], the range MR intensities are normalised to.

Samplers: ``ddim`` is MONAI's deterministic DDIM (eta = 0) on evenly spaced "trailing"
timesteps (T-1, T-1-k, ...) so that every step lands on the timestep MONAI's ``step`` assumes.
``ddpm`` is ancestral sampling: MONAI's DDPMScheduler when all T steps run, otherwise DDIM with
eta = 1 (the strided equivalent of ancestral sampling; MONAI's DDPM step assumes stride 1).
Both start from Gaussian noise (card ``sampling.method: noise``, the plain DDPM).

``refine`` (card ``sampling.method: refine``, the enhanced model): the same network also gives a
deterministic *estimate* of the MR (one pass at t = T-1 with a zero noisy input, trained with an
L1 loss on its x0); sampling forward-diffuses that estimate to ``t0`` and runs a few DDIM steps
down to 0 (Come-Closer-Diffuse-Faster, Chung et al. CVPR 2022; SDEdit), and training spends its
diffusion budget on t in 1..t0 only, the timesteps sampling visits (Fast-DDPM). The DDIM step is
written out with both timesteps explicit (:func:`ddim_step`), as MONAI 1.6's
``DDIMScheduler.step`` assumes the previous timestep is ``t - T // n``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ..errors import CheckpointError, ModelError

log = logging.getLogger(__name__)

DEFAULT_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "schedule": "cosine",
    "prediction_type": "v_prediction",
    "clip_sample": True,
}

SAMPLERS: tuple[str, ...] = ("ddim", "ddpm")


class StableDDIMScheduler(DDIMScheduler):
    """MONAI's DDIM with the step variance capped at ``1 - alpha_prev``.

    With eta = 1 the direction term ``sqrt(1 - alpha_prev - sigma^2)`` is analytically >= 0 but
    rounds below zero at the first strided step (alpha_t ~ 1e-9), which makes NaNs; the cap
    keeps a 1e-5 relative margin for the sqrt-then-square round trip.
    """

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        variance = super()._get_variance(timestep, prev_timestep)
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return torch.clamp(variance, min=0.0, max=float(1.0 - alpha_prev) * (1.0 - 1e-5))


def scheduler_config(**overrides: Any) -> dict[str, Any]:
    """The default scheduler config with overrides (what the checkpoint card stores)."""
    return {**DEFAULT_SCHEDULER, **overrides}


def _kwargs(config: dict[str, Any]) -> dict[str, Any]:
    known = ("num_train_timesteps", "schedule", "prediction_type", "clip_sample")
    missing = [k for k in known if k not in config]
    if missing:
        raise CheckpointError(f"scheduler config lacks {', '.join(missing)}; the checkpoint card is incomplete")
    return dict(config)


def training_scheduler(config: dict[str, Any]) -> DDPMScheduler:
    """The scheduler used to noise training samples (its schedule equals the samplers')."""
    return DDPMScheduler(**_kwargs(config))


def trailing_timesteps(num_train: int, steps: int) -> torch.Tensor:
    """Evenly strided timesteps T-1, T-1-k, ... with k = T // steps (MONAI DDIM's stride)."""
    stride = num_train // steps
    return torch.arange(num_train - 1, -1, -stride, dtype=torch.long)[:steps]


@dataclass
class SamplingPlan:
    """A scheduler ready for sampling, its timesteps and the eta for DDIM steps."""

    scheduler: DDIMScheduler | DDPMScheduler
    timesteps: torch.Tensor
    eta: float

    def step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """One reverse step: x_t -> x_{t-k}."""
        if isinstance(self.scheduler, DDIMScheduler):
            prev, _ = self.scheduler.step(model_output, t, sample, eta=self.eta, generator=generator)
        else:
            prev, _ = self.scheduler.step(model_output, t, sample, generator=generator)
        return prev


def sampling_plan(config: dict[str, Any], sampler: str, steps: int) -> SamplingPlan:
    """Build the scheduler and timesteps for ``sampler`` with ``steps`` network evaluations."""
    if sampler not in SAMPLERS:
        raise ModelError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    num_train = int(config["num_train_timesteps"])
    if not 1 <= steps <= num_train:
        raise ModelError(f"steps must be between 1 and {num_train}, got {steps}")
    if sampler == "ddpm" and steps == num_train:
        scheduler: DDIMScheduler | DDPMScheduler = DDPMScheduler(**_kwargs(config))
        scheduler.set_timesteps(num_train)
        return SamplingPlan(scheduler, scheduler.timesteps.clone(), 1.0)
    scheduler = StableDDIMScheduler(**_kwargs(config), set_alpha_to_one=True)
    scheduler.set_timesteps(steps)
    scheduler.timesteps = trailing_timesteps(num_train, steps)
    return SamplingPlan(scheduler, scheduler.timesteps.clone(), 1.0 if sampler == "ddpm" else 0.0)


def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    """The regression target for the configured prediction type."""
    kind = scheduler.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    raise CheckpointError(f"unsupported prediction type {kind!r}")


# --------------------------------------------------------------------------- estimate-then-refine
#: How a checkpoint samples (card ``sampling``). ``noise``: from Gaussian noise with ``ddim``/``ddpm``
#: (the plain DDPM). ``refine``: estimate, forward-diffuse to ``t0``, a few DDIM steps (see below).
METHODS: tuple[str, ...] = ("noise", "refine")
DEFAULT_SAMPLING: dict[str, Any] = {"method": "noise", "default_steps": 20}
#: The enhanced model's sampling: t0 = 400 of 1000 keeps ~80% of the estimate's signal amplitude
#: (alpha_bar 0.65 on the cosine schedule) and noise of std 0.59, enough to wash out its errors.
#: Default one evaluation: the estimate alone, i.e. the default output is a one-pass estimate by the
#: diffusion network, not a denoising chain. Measured: no path with >= 2 evaluations (t0 20-400)
#: keeps the estimate's fidelity on model 0.3.1 (docs/model.md "Sampling: the one-pass estimate
#: against denoising paths", benchmarks/sampling_sweep.py); more steps give samples (spread) instead.
REFINE_SAMPLING: dict[str, Any] = {"method": "refine", "t0": 400, "estimate_fraction": 0.5, "default_steps": 1}


def sampling_config(method: str = "noise", **overrides: Any) -> dict[str, Any]:
    """The card's ``sampling`` section for ``method`` with overrides."""
    if method not in METHODS:
        raise CheckpointError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
    base = REFINE_SAMPLING if method == "refine" else DEFAULT_SAMPLING
    return {**base, **overrides}


def alphas_cumprod(config: dict[str, Any]) -> torch.Tensor:
    """The cumulative signal fractions alpha_bar_t of the schedule (float32, length T)."""
    return training_scheduler(config).alphas_cumprod.to(torch.float32)


def refine_timesteps(t0: int, steps: int) -> list[int]:
    """The DDIM timesteps of ``steps`` network evaluations: the first is the estimate, then
    ``steps - 1`` evenly spaced steps from ``t0`` down (e.g. t0=400, steps=3: [400, 200])."""
    k = steps - 1
    return [int(round(t0 * (k - i) / k)) for i in range(k)] if k > 0 else []


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x0 = sqrt(a) x_t - sqrt(1 - a) v (v-parametrisation)."""
    return math.sqrt(alpha_bar) * x_t - math.sqrt(1.0 - alpha_bar) * v


def ddim_step(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: float, alpha_bar_prev: float,
              clip: bool = True) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from t to an explicit previous timestep; v-prediction.

    Written out rather than MONAI's ``DDIMScheduler.step``, which derives the previous timestep
    as ``t - T // n`` and so is only right on its own evenly strided grid; here both ends are given.
    """
    x0 = x0_from_v(x_t, v, alpha_bar)
    eps = math.sqrt(1.0 - alpha_bar) * x_t + math.sqrt(alpha_bar) * v
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    return math.sqrt(alpha_bar_prev) * x0 + math.sqrt(1.0 - alpha_bar_prev) * eps


@dataclass
class RefinePlan:
    """Estimate-then-refine sampling: the estimate at ``estimate_t`` from a zero input, then DDIM
    from the estimate forward-diffused to ``timesteps[0]`` down to 0 (CCDF, Chung et al. 2022)."""

    alphas_cumprod: torch.Tensor
    estimate_t: int
    timesteps: list[int]
    clip: bool = True

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t; 1 for t < 0 (clean data)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    @property
    def evaluations(self) -> int:
        """Network evaluations per patch and sample: the estimate and one per DDIM step."""
        return 1 + len(self.timesteps)


def refine_plan(scheduler: dict[str, Any], sampling: dict[str, Any], steps: int) -> RefinePlan:
    """The plan for ``steps`` network evaluations (1: the estimate alone)."""
    num_train = int(scheduler["num_train_timesteps"])
    t0 = int(sampling.get("t0", REFINE_SAMPLING["t0"]))
    if not 1 <= t0 < num_train:
        raise CheckpointError(f"sampling.t0 must be in [1, {num_train - 1}], got {t0}")
    if not 1 <= steps <= t0 + 1:
        raise ModelError(f"steps must be between 1 and {t0 + 1} for this model, got {steps}")
    return RefinePlan(alphas_cumprod(scheduler), num_train - 1, refine_timesteps(t0, steps),
                      bool(scheduler.get("clip_sample", True)))
