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

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from torch import nn

from .diffusion import RefinePlan, SamplingPlan, ddim_step, x0_from_v

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class WindowSpec:
    """How the network is run over a volume: patch size, overlap, batch and devices."""

    patch: tuple[int, int, int]
    overlap: float = 0.5
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


def window_edges(shape: tuple[int, ...], spec: WindowSpec) -> tuple[np.ndarray, ...]:
    """Per axis, the planes where the sliding window's patches start or end inside a volume of
    ``shape``: positions in voxel-index units, a plane at ``k - 0.5`` lying between voxels k-1 and k
    (the volume's own borders left out). The same windows as :func:`windowed` (MONAI's scan
    interval ``int(roi * (1 - overlap))``, or the roi where it fills the axis)."""
    roi = tuple(min(int(r), int(n)) for r, n in zip(spec.patch, shape))
    interval = tuple(r if r == n else max(1, int(r * (1 - spec.overlap))) for r, n in zip(roi, shape))
    slices = dense_patch_slices(shape, roi, interval)
    edges = []
    for axis, size in enumerate(shape):
        planes = {float(b) - 0.5 for window in slices for b in (window[axis].start, window[axis].stop)}
        edges.append(np.array(sorted(p for p in planes if 0.0 < p < size - 1.0), dtype=np.float64))
    return tuple(edges)


def windowed_samples(network: nn.Module, x: torch.Tensor, ct: torch.Tensor, spec: WindowSpec,
                     counter: EvalCounter, t: torch.Tensor) -> torch.Tensor:
    """``network([x_i, ct], t)`` for every sample ``x_i`` of ``x`` (N, 1, D, H, W) at once.

    ``ct`` is (1, C, D, H, W), one channel per CT window. The N samples travel as channels of one
    volume through the sliding window, so each window position is one network call with batch
    ``patches x N`` (the samples of one patch together); the gaussian blending is per channel, so
    each sample is blended exactly as on its own. Returns (N, 1, D, H, W).
    """
    n, per = x.shape[0], 1 + ct.shape[1]
    packed = torch.cat([x, ct.expand(n, *ct.shape[1:])], dim=1).reshape(1, n * per, *x.shape[2:])

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        b = patch.shape[0]
        inputs = patch.reshape(b * n, per, *patch.shape[2:])
        counter.count += inputs.shape[0]
        with _autocast(spec):
            out = network(inputs, t.to(patch.device).expand(inputs.shape[0]))
        return out.float().reshape(b, n, *patch.shape[2:])

    out = sliding_window_inference(
        packed, roi_size=spec.patch, sw_batch_size=spec.sw_batch_size, predictor=predictor,
        overlap=spec.overlap, mode="gaussian", padding_mode="replicate",
        sw_device=spec.device, device=packed.device,
    )
    return out.reshape(n, 1, *x.shape[2:])


def _timesteps(plan: SamplingPlan) -> Iterator[int]:
    for t in plan.timesteps:
        yield int(t)


def _chunks(seeds: list[int], size: int) -> Iterator[list[int]]:
    size = max(1, size)
    for i in range(0, len(seeds), size):
        yield seeds[i:i + size]


def mean_of(samples: torch.Tensor) -> torch.Tensor:
    """The mean of samples (N, 1, ...) as (1, 1, ...), summed in sample order (x_1/N + x_2/N + ...),
    the same float32 operations as the former per-seed loop, so one sample is returned unchanged."""
    mean = torch.zeros(samples.shape[1:], dtype=torch.float32, device=samples.device)[None]
    for i in range(samples.shape[0]):
        mean += samples[i:i + 1] / samples.shape[0]
    return mean


def sample_diffusion(network: nn.Module, ct: torch.Tensor, plan: SamplingPlan, spec: WindowSpec,
                     seeds: list[int], counter: EvalCounter, progress: Progress | None = None) -> torch.Tensor:
    """The mean (1, 1, D, H, W) of :func:`diffusion_samples` (one sample: that sample)."""
    return mean_of(diffusion_samples(network, ct, plan, spec, seeds, counter, progress))


def diffusion_samples(network: nn.Module, ct: torch.Tensor, plan: SamplingPlan, spec: WindowSpec,
                      seeds: list[int], counter: EvalCounter,
                      progress: Progress | None = None, batch_samples: int = 0) -> torch.Tensor:
    """Denoise from gaussian noise conditioned on ``ct`` (1, C, D, H, W) in [-1, 1], once per seed;
    returns the samples (N, 1, D, H, W) in seed order.

    ``batch_samples`` samples (0: all) run together, one network call per window position; each
    keeps its own generator for its initial noise and its stochastic steps, so a sample does not
    depend on which others share its batch.
    """
    total, done = len(plan.timesteps) * len(seeds), 0
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for chunk in _chunks(seeds, batch_samples or len(seeds)):
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in chunk]
            x = torch.cat([torch.randn(ct[:, :1].shape, generator=g, dtype=torch.float32, device=ct.device)
                           for g in generators])
            for t in _timesteps(plan):
                pred = windowed_samples(network, x, ct, spec, counter, torch.tensor([t], dtype=torch.long))
                x = torch.cat([plan.step(pred[i:i + 1], t, x[i:i + 1], g) for i, g in enumerate(generators)])
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            out.append(x)
    return torch.cat(out)


def estimate(network: nn.Module, ct: torch.Tensor, plan: RefinePlan, spec: WindowSpec,
             counter: EvalCounter) -> torch.Tensor:
    """The model's deterministic estimate of x0: one pass at ``estimate_t`` with a zero noisy input."""
    inputs = torch.cat([torch.zeros_like(ct[:, :1]), ct], dim=1)
    t = torch.tensor([plan.estimate_t], dtype=torch.long)
    with torch.inference_mode():
        v = windowed(network, inputs, spec, counter, t)
        x0 = x0_from_v(inputs[:, :1], v, plan.alpha_bar(plan.estimate_t))
    return x0.clamp(-1.0, 1.0) if plan.clip else x0


def sample_refine(network: nn.Module, ct: torch.Tensor, plan: RefinePlan, spec: WindowSpec,
                  seeds: list[int], counter: EvalCounter, progress: Progress | None = None) -> torch.Tensor:
    """The mean (1, 1, D, H, W) of :func:`refine_samples` (one sample, or the estimate alone: that)."""
    return mean_of(refine_samples(network, ct, plan, spec, seeds, counter, progress))


def refine_samples(network: nn.Module, ct: torch.Tensor, plan: RefinePlan, spec: WindowSpec,
                   seeds: list[int], counter: EvalCounter, progress: Progress | None = None,
                   batch_samples: int = 0) -> torch.Tensor:
    """Estimate, then per seed: forward-diffuse it to t0 and run the DDIM steps; the samples
    (N, 1, D, H, W) in seed order, ``batch_samples`` (0: all) per network call and window.

    The estimate is shared by all samples (computed once); with one evaluation per patch the
    estimate itself is the only sample (the translator refuses several samples then: they would
    all be equal). Samples differ only in the noise added at t0.
    """
    total = 1 + len(plan.timesteps) * len(seeds)
    x0 = estimate(network, ct, plan, spec, counter)
    if progress is not None:
        progress(1, total)
    if not plan.timesteps:
        return x0
    done, out = 1, []
    steps = [*plan.timesteps, -1]
    a0 = plan.alpha_bar(steps[0])
    with torch.inference_mode():
        for chunk in _chunks(seeds, batch_samples or len(seeds)):
            noise = torch.cat([torch.randn(ct[:, :1].shape, generator=torch.Generator(device="cpu").manual_seed(seed),
                                           dtype=torch.float32).to(ct.device) for seed in chunk])
            x = (a0 ** 0.5) * x0 + ((1.0 - a0) ** 0.5) * noise
            for t, t_prev in zip(steps[:-1], steps[1:]):
                v = windowed_samples(network, x, ct, spec, counter, torch.tensor([t], dtype=torch.long))
                x = ddim_step(x, v, plan.alpha_bar(t), plan.alpha_bar(t_prev), plan.clip)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            out.append(x)
    return torch.cat(out)


def predict_regression(network: nn.Module, ct: torch.Tensor, spec: WindowSpec, counter: EvalCounter,
                       progress: Progress | None = None) -> torch.Tensor:
    """One sliding-window pass of the deterministic regression UNet."""
    with torch.inference_mode():
        out = windowed(network, ct, spec, counter)
    if progress is not None:
        progress(1, 1)
    return out
