"""CT volume in HU -> synthetic MR volume (uint16, 12 bits) on the same grid.

The one entry point everyone else uses (see docs/architecture.md). Steps: check the input,
body mask, HU -> [-1, 1], resample to the model spacing, crop to the body's bounding box (plus
a margin; nothing outside the body is shown, so no network time is spent there), sample
(``refine``: the estimate, then DDIM from t0; ``ddim``/``ddpm``: from noise; ``unet``: one pass;
``samples`` > 1 averages several samples), global normalisation and contrast enhancement on the
model grid, resample back to the exact CT shape, 12-bit mapping.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError, ModelError
from . import pre_post
from .checkpoint import Checkpoint, load_checkpoint
from .diffusion import RefinePlan, SamplingPlan, refine_plan, sampling_plan
from .sampler import EvalCounter, WindowSpec, predict_regression, sample_diffusion, sample_refine

log = logging.getLogger(__name__)

CPU_MIN_BATCH = 2
#: Voxels of model grid kept around the body's bounding box (context for the network's edge).
CROP_MARGIN = 4
SAMPLERS = ("auto", "refine", "ddim", "ddpm")


@dataclass(frozen=True)
class TranslationSettings:
    """How to sample: steps, sampler, samples, seed, device and sliding-window parameters.

    ``steps`` counts network evaluations per patch and sample (refine: the estimate plus
    ``steps - 1`` DDIM steps); None takes the model card's default. ``sampler`` "auto" takes the
    card's method (refine for the enhanced model, ddim for a plain DDPM). ``samples`` > 1 returns
    the mean of that many samples, each with its own seed derived from ``seed``.
    """

    steps: int | None = None
    sampler: str = "auto"
    seed: int = 0
    device: str = "auto"
    overlap: float = 0.25
    sw_batch_size: int = 1
    samples: int = 1


def sample_seeds(seed: int, samples: int) -> list[int]:
    """Seeds of ``samples`` samples: the first is ``seed`` itself (so one sample is unchanged),
    the others derived from it (numpy SeedSequence)."""
    derived = np.random.SeedSequence(seed).generate_state(max(samples - 1, 0), dtype=np.uint32)
    return [seed, *(int(v) for v in derived)]


def body_box(mask: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, ...]:
    """The bounding box of ``mask`` plus ``margin`` voxels (the whole volume if the mask is empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(0, int(hit[0]) - margin), min(mask.shape[axis], int(hit[-1]) + 1 + margin)))
    return tuple(box)


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model that made a result (goes into the DICOM output)."""

    name: str
    version: str
    architecture: str
    weight_hash: str
    description: str


@dataclass
class TranslationResult:
    """A synthetic MR volume on the CT grid and how it was made."""

    mr: np.ndarray
    window_center: float
    window_width: float
    model: ModelInfo
    settings: TranslationSettings
    device: str
    network_evaluations: int
    seconds: float


def resolve_device(name: str) -> tuple[torch.device, torch.dtype | None]:
    """The compute device for ``name`` and its autocast dtype (bf16 if supported, else fp16; CPU: none)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cpu":
        return device, None
    if device.type != "cuda":
        raise ModelError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ModelError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise ModelError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, dtype


class Translator:
    """Loads a checkpoint once and translates CT volumes to synthetic MR volumes."""

    def __init__(self, checkpoint: str | os.PathLike[str] = "bundled",
                 settings: TranslationSettings = TranslationSettings()) -> None:
        self._ckpt: Checkpoint = load_checkpoint(checkpoint)
        card = self._ckpt.card
        self.model_info = ModelInfo(card.name, card.version, card.architecture, self._ckpt.weight_hash, card.description)
        self._device, self._autocast = resolve_device(settings.device)
        # Built once (validating the settings early) and reused: MONAI's DDIM/DDPM ``step`` reads
        # the scheduler's tables without changing them, so every translate starts from the same plan.
        self.settings = settings = self._resolve(settings, card.architecture, card.sampling)
        self._plan: SamplingPlan | RefinePlan | None = None
        if settings.sampler == "refine":
            self._plan = refine_plan(card.scheduler, card.sampling, int(settings.steps or 1))
        elif card.architecture != "unet":
            self._plan = sampling_plan(card.scheduler, settings.sampler, int(settings.steps or 1))
        if not 0.0 <= settings.overlap < 1.0 or settings.sw_batch_size < 1 or settings.samples < 1:
            raise ModelError("overlap must be in [0, 1), sw_batch_size >= 1 and samples >= 1")
        self._network = self._ckpt.network.to(self._device)
        self._mapping = pre_post.IntensityMapping.from_card(card.intensity)
        log.info("model %s %s (%s) on %s", card.name, card.version, card.architecture, self._device)

    @staticmethod
    def _resolve(settings: TranslationSettings, arch: str, sampling: dict[str, object]) -> TranslationSettings:
        """Settings with the card's defaults filled in (what the output's UIDs and provenance record)."""
        if settings.sampler not in SAMPLERS:
            raise ModelError(f"unknown sampler {settings.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        method = str(sampling.get("method", "noise"))
        if arch == "unet":
            return dataclasses.replace(settings, sampler="regression", steps=1, samples=1)
        sampler = settings.sampler
        if sampler == "auto":
            sampler = "refine" if method == "refine" else "ddim"
        if sampler == "refine" and method != "refine":
            raise ModelError("this model was not trained for the refine sampler (no estimate); use ddim or ddpm")
        # The card's default is for the card's own method; a refine model sampled from noise gets 20.
        default = int(sampling.get("default_steps", 20)) if (sampler == "refine") == (method == "refine") else 20
        steps = settings.steps if settings.steps is not None else default
        if steps < 1:
            raise ModelError(f"steps must be at least 1, got {steps}")
        return dataclasses.replace(settings, sampler=sampler, steps=steps)

    @property
    def device(self) -> str:
        """The compute device actually used, e.g. "cpu" or "cuda:0"."""
        return str(self._device)

    def translate(self, ct_hu: np.ndarray, spacing: tuple[float, float, float],
                  progress: Callable[[int, int], None] | None = None) -> TranslationResult:
        """Translate ``ct_hu`` (slice,row,col in HU, ``spacing`` in mm) to synthetic MR.

        ``ct_hu`` is float32 or exact int16 HU (as :class:`~ct2mri_node.volume.assemble.CTVolume`
        gives); both are used as they are, converted to float32 slice by slice on the way to
        the model grid, and give the same result. Other dtypes are converted to float32 first.
        """
        start = time.perf_counter()
        ct_hu = np.asarray(ct_hu)
        if ct_hu.dtype not in (np.dtype(np.int16), np.dtype(np.float32)):
            ct_hu = ct_hu.astype(np.float32)
        pre_post.check_ct(ct_hu)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise InputError(f"spacing must be three positive values in mm, got {spacing}")
        mask = pre_post.body_mask(ct_hu)
        grid = pre_post.model_shape(ct_hu.shape, tuple(spacing), self._ckpt.card.spacing_mm)
        ct_model, mask_model = pre_post.to_model_grid(ct_hu, mask, grid, self._mapping)
        counter = EvalCounter()
        box = body_box(mask_model)
        raw = np.full(ct_model.shape, -1.0, dtype=np.float32)
        raw[box] = self._sample(np.ascontiguousarray(ct_model[box]), counter, progress)
        if not np.isfinite(raw).all():
            raise ModelError("the network produced non-finite values; the checkpoint may be corrupt or diverged")
        enhanced = pre_post.postprocess_model_grid(raw, mask_model)
        back = pre_post.resample(enhanced, ct_hu.shape)
        mr, center, width = pre_post.to_uint12(back, mask)
        seconds = time.perf_counter() - start
        log.info("translated a %s volume (model grid %s) in %.1f s, %d network evaluations",
                 ct_hu.shape, grid, seconds, counter.count)
        return TranslationResult(mr, center, width, self.model_info, self.settings, self.device, counter.count, seconds)

    def _batch(self) -> int:
        """Patches per network call: on the CPU at least 2, since torch sends a single 3D patch of
        a narrow layer to a ~3x slower convolution path (measured: 0.24 s vs 0.07 s per 32^3 patch)."""
        if self._device.type == "cpu":
            return max(CPU_MIN_BATCH, self.settings.sw_batch_size)
        return self.settings.sw_batch_size

    def _sample(self, ct_model: np.ndarray, counter: EvalCounter,
                progress: Callable[[int, int], None] | None) -> np.ndarray:
        card = self._ckpt.card
        spec = WindowSpec(card.patch_size, self.settings.overlap, self._batch(), self._device, self._autocast)
        ct = torch.from_numpy(ct_model)[None, None]
        try:
            seeds = sample_seeds(self.settings.seed, self.settings.samples)
            if self._plan is None:
                out = predict_regression(self._network, ct, spec, counter, progress)
            elif isinstance(self._plan, RefinePlan):
                out = sample_refine(self._network, ct, self._plan, spec, seeds, counter, progress)
            else:
                out = sample_diffusion(self._network, ct, self._plan, spec, seeds, counter, progress)
        except torch.cuda.OutOfMemoryError as exc:
            raise ModelError(f"out of GPU memory on {self.device}; lower sw_batch_size or use --device cpu") from exc
        return out[0, 0].numpy()
