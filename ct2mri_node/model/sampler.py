"""The sampling loop: whole-volume denoising with patch-wise network evaluation.

At every denoising step the network runs on overlapping patches (MONAI
``sliding_window_inference``, gaussian blending, so there are no seams); the full volume stays
on ``volume_device`` (CPU) and only patches go to the compute device, so memory is bounded by
the patch size, not the volume size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from .diffusion import RefinePlan, SamplingPlan, ddim_step, x0_from_v

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class WindowSpec:
    """How the network is run over a volume: patch size, overlap, batch and devices."""

    patch: tuple[int, int, int]
    overlap: float = 0.25
    sw_batch_size: int = 1
    device: torch.device = torch.device("cpu")
    autocast_dtype: torch.dtype | None = None


@dataclass
class EvalCounter:
    """Counts network forward passes (one per patch batch element)."""

    count: int = 0


def _autocast(spec: WindowSpec) -> contextlib.AbstractContextManager[None]:
    if spec.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=spec.device.type, dtype=spec.autocast_dtype)


def windowed(network: nn.Module, volume: torch.Tensor, spec: WindowSpec, counter: EvalCounter,
             t: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``network(patch, t)`` over ``volume`` (1, C, D, H, W) with gaussian-blended patches."""

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        counter.count += patch.shape[0]
        with _autocast(spec):
            out = network(patch, None if t is None else t.to(patch.device).expand(patch.shape[0]))
        return out.float()

    return sliding_window_inference(
        volume, roi_size=spec.patch, sw_batch_size=spec.sw_batch_size, predictor=predictor,
        overlap=spec.overlap, mode="gaussian", padding_mode="replicate",
        sw_device=spec.device, device=volume.device,
    )


def _timesteps(plan: SamplingPlan) -> Iterator[int]:
    for t in plan.timesteps:
        yield int(t)


def sample_diffusion(network: nn.Module, ct: torch.Tensor, plan: SamplingPlan, spec: WindowSpec,
                     seeds: list[int], counter: EvalCounter,
                     progress: Progress | None = None) -> torch.Tensor:
    """Denoise from gaussian noise conditioned on ``ct`` (1, 1, D, H, W) in [-1, 1], once per seed;
    returns the mean x0 of the samples (one sample: that sample)."""
    total, done = len(plan.timesteps) * len(seeds), 0
    mean = torch.zeros(ct.shape, dtype=torch.float32, device=ct.device)
    with torch.inference_mode():
        for seed in seeds:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            x = torch.randn(ct.shape, generator=generator, dtype=torch.float32, device=ct.device)
            for t in _timesteps(plan):
                inputs = torch.cat([x, ct], dim=1)
                pred = windowed(network, inputs, spec, counter, torch.tensor([t], dtype=torch.long))
                x = plan.step(pred, t, x, generator)
                done += 1
                if progress is not None:
                    progress(done, total)
            mean += x / len(seeds)
    return mean


def estimate(network: nn.Module, ct: torch.Tensor, plan: RefinePlan, spec: WindowSpec,
             counter: EvalCounter) -> torch.Tensor:
    """The model's deterministic estimate of x0: one pass at ``estimate_t`` with a zero noisy input."""
    inputs = torch.cat([torch.zeros_like(ct), ct], dim=1)
    t = torch.tensor([plan.estimate_t], dtype=torch.long)
    with torch.inference_mode():
        v = windowed(network, inputs, spec, counter, t)
        x0 = x0_from_v(inputs[:, :1], v, plan.alpha_bar(plan.estimate_t))
    return x0.clamp(-1.0, 1.0) if plan.clip else x0


def sample_refine(network: nn.Module, ct: torch.Tensor, plan: RefinePlan, spec: WindowSpec,
                  seeds: list[int], counter: EvalCounter, progress: Progress | None = None) -> torch.Tensor:
    """Estimate, then per seed: forward-diffuse it to t0 and run the DDIM steps; the mean of the samples.

    The estimate is shared by all samples (computed once); with one evaluation per patch the
    estimate itself is returned. Samples differ only in the noise added at t0.
    """
    total = 1 + len(plan.timesteps) * len(seeds)
    x0 = estimate(network, ct, plan, spec, counter)
    if progress is not None:
        progress(1, total)
    if not plan.timesteps:
        return x0
    done, mean = 1, torch.zeros_like(x0)
    steps = [*plan.timesteps, -1]
    with torch.inference_mode():
        for seed in seeds:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            noise = torch.randn(ct.shape, generator=generator, dtype=torch.float32).to(ct.device)
            a0 = plan.alpha_bar(steps[0])
            x = (a0 ** 0.5) * x0 + ((1.0 - a0) ** 0.5) * noise
            for t, t_prev in zip(steps[:-1], steps[1:]):
                v = windowed(network, torch.cat([x, ct], dim=1), spec, counter, torch.tensor([t], dtype=torch.long))
                x = ddim_step(x, v, plan.alpha_bar(t), plan.alpha_bar(t_prev), plan.clip)
                done += 1
                if progress is not None:
                    progress(done, total)
            mean += x / len(seeds)
    return mean


def predict_regression(network: nn.Module, ct: torch.Tensor, spec: WindowSpec, counter: EvalCounter,
                       progress: Progress | None = None) -> torch.Tensor:
    """One sliding-window pass of the deterministic regression UNet."""
    with torch.inference_mode():
        out = windowed(network, ct, spec, counter)
    if progress is not None:
        progress(1, 1)
    return out
