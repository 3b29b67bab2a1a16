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

from .diffusion import SamplingPlan

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
                     generator: torch.Generator, counter: EvalCounter,
                     progress: Progress | None = None) -> torch.Tensor:
    """Denoise from gaussian noise conditioned on ``ct`` (1, 1, D, H, W) in [-1, 1]; returns x0."""
    x = torch.randn(ct.shape, generator=generator, dtype=torch.float32, device=ct.device)
    total = len(plan.timesteps)
    with torch.inference_mode():
        for i, t in enumerate(_timesteps(plan)):
            inputs = torch.cat([x, ct], dim=1)
            pred = windowed(network, inputs, spec, counter, torch.tensor([t], dtype=torch.long))
            x = plan.step(pred, t, x, generator)
            if progress is not None:
                progress(i + 1, total)
    return x


def predict_regression(network: nn.Module, ct: torch.Tensor, spec: WindowSpec, counter: EvalCounter,
                       progress: Progress | None = None) -> torch.Tensor:
    """One sliding-window pass of the deterministic regression UNet."""
    with torch.inference_mode():
        out = windowed(network, ct, spec, counter)
    if progress is not None:
        progress(1, 1)
    return out
