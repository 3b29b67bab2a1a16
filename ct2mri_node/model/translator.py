"""CT volume in HU -> synthetic MR volume (uint16, 12 bits) on the same grid.

The one entry point everyone else uses (see docs/architecture.md). Steps: check the input,
body mask, HU -> [-1, 1], resample to the model spacing, crop to the body's bounding box (plus
a margin; nothing outside the body is shown, so no network time is spent there), sample
(``refine``: the estimate, then DDIM from t0; by default the bundled model's one-pass estimate
alone, docs/model.md; ``ddim``/``ddpm``: from noise; ``unet``: one pass;
``samples`` > 1 averages several samples, each after the first on a flipped copy of the CT and
flipped back: test-time augmentation), global normalisation and contrast enhancement on the model
grid, resample back to the exact CT shape, 12-bit mapping. With several samples the result also
carries their per-voxel standard deviation in MR pixel units, times the model card's conformal
scale (the uncertainty map, :mod:`.uncertainty`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# cuBLAS is deterministic only with a fixed workspace, and reads this once when CUDA starts;
# set before anything here touches CUDA (a value the operator set is kept).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..errors import InputError, ModelError
from . import pre_post
from .checkpoint import Checkpoint, load_checkpoint
from .diffusion import REFINE_SAMPLING, RefinePlan, SamplingPlan, refine_plan, sampling_plan
from .sampler import (
    EvalCounter,
    WindowSpec,
    diffusion_samples,
    mean_of,
    predict_regression,
    refine_samples,
    window_edges,
)
from .uncertainty import FLIPS, UncertaintyCalibration, sample_flips

log = logging.getLogger(__name__)

CPU_MIN_BATCH = 2
#: Voxels of model grid kept around the body's bounding box (context for the network's edge).
CROP_MARGIN = 4
SAMPLERS = ("auto", "refine", "ddim", "ddpm")
#: Bytes of sample state on the model grid that one batch of samples may hold on the CPU (the
#: samples, their sliding-window output and blending buffers: about 4 float32 copies each);
#: more samples than fit are run in consecutive batches. On a GPU only patches live on the
#: device, so all samples always run in one batch there.
CPU_SAMPLE_BUDGET_BYTES = 4 * 1024**3
#: Network evaluations per patch a refine model uses when more samples are asked for than there are
#: test-time flips (:data:`.uncertainty.FLIPS`) and ``steps`` is left to the card: its single
#: default evaluation is the deterministic estimate, so two samples with the same flip would be
#: equal; 2 adds one stochastic DDIM step from t0.
MIN_REFINE_STEPS_FOR_SAMPLES = 2


@dataclass(frozen=True)
class TranslationSettings:
    """How to sample: steps, sampler, samples, seed, device and sliding-window parameters.

    ``steps`` counts network evaluations per patch and sample (refine: the estimate plus
    ``steps - 1`` DDIM steps); None takes the model card's default. ``sampler`` "auto" takes the
    card's method (refine for the enhanced model, ddim for a plain DDPM). ``samples`` > 1 returns
    the mean of that many samples, each with its own seed derived from ``seed`` and its own flip
    of the CT (:func:`.uncertainty.sample_flips`: none for the first, so one sample is the plain
    translation), and their standard deviation. A refine model's single evaluation is its
    deterministic estimate, so with more samples than flips it needs at least 2 evaluations
    (``steps`` None gives ``max(card default, 2)``; an explicit 1 is a ModelError). ``t0`` overrides the card's
    ``sampling.t0`` (refine only: a small t0 keeps more of the estimate, SDEdit/CCDF).
    """

    steps: int | None = None
    sampler: str = "auto"
    seed: int = 0
    device: str = "auto"
    #: fraction of a patch shared with its neighbour: 0.5 (stride 16 of 32) keeps the seam ratio of
    #: the gaussian-blended windows at or below 1.15 on the independent cases, where 0.25 left faint
    #: lines in uniform fat (seam ratio up to 1.54) at a third of the cost
    overlap: float = 0.5
    sw_batch_size: int = 1
    samples: int = 1
    #: refine only: the timestep the estimate is forward-diffused to before the DDIM steps (None:
    #: the card's ``sampling.t0``; resolved to it, so it is recorded; None for other samplers)
    t0: int | None = None


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
    #: "checkpoint" (our format) or "bundle" (a MONAI bundle; ``architecture`` then also names
    #: the bundle's network class, and ``weight_hash`` is the sha256 of its weights file).
    source: str = "checkpoint"


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
    #: Numerical precision of the network: "fp32" (CPU), or the CUDA autocast dtype ("bf16",
    #: "fp16"). It changes the pixels, so it enters the output UIDs.
    precision: str = "fp32"
    #: With ``samples`` >= 2: the per-voxel standard deviation across the samples (float32, the
    #: shape of ``mr``, in MR pixel units: each sample through the post-processing fitted on the
    #: mean that became ``mr``; zero outside the body), plus ``calibration.floor`` and times
    #: ``calibration.scale`` inside the body. None with one sample.
    uncertainty: np.ndarray | None = None
    #: The conformal scale applied to ``uncertainty`` and what it promises (from the model card).
    calibration: UncertaintyCalibration = dataclasses.field(default_factory=UncertaintyCalibration)
    #: Per axis of ``mr``, the planes where the network's sliding-window patches met (voxel-index
    #: units of the CT grid, ``k - 0.5`` between voxels k-1 and k): where tiles would show.
    window_edges: tuple[np.ndarray, ...] = ()


#: Precision names of the autocast dtypes (None: no autocast, plain float32).
PRECISIONS: dict[torch.dtype | None, str] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA: deterministic algorithms and cuDNN kernels (no autotuning) for the block,
    restoring the caller's settings after; an op without a deterministic kernel raises
    (warn_only=False) rather than silently varying. The CPU kernels used are deterministic."""
    if device.type != "cuda":
        yield
        return
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                        benchmark=False, deterministic=True):
            yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)


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
    """Loads a checkpoint (or a MONAI bundle) once and translates CT volumes to synthetic MR volumes."""

    def __init__(self, checkpoint: str | os.PathLike[str] = "bundled",
                 settings: TranslationSettings = TranslationSettings(), *,
                 bundle: str | os.PathLike[str] | None = None) -> None:
        if bundle is not None:
            from .bundle import load_bundle   # monai.bundle is imported only for bundles

            self._ckpt: Checkpoint = load_bundle(bundle)
        else:
            self._ckpt = load_checkpoint(checkpoint)
        card = self._ckpt.card
        architecture = card.architecture
        if self._ckpt.source == "bundle":
            inner = getattr(self._ckpt.network, "net", self._ckpt.network)
            architecture = f"{card.architecture}, MONAI bundle {type(inner).__name__}"
        self.model_info = ModelInfo(card.name, card.version, architecture, self._ckpt.weight_hash, card.description,
                                    source=self._ckpt.source)
        self._device, self._autocast = resolve_device(settings.device)
        # Built once (validating the settings early) and reused: MONAI's DDIM/DDPM ``step`` reads
        # the scheduler's tables without changing them, so every translate starts from the same plan.
        self.settings = settings = self._resolve(settings, card.architecture, card.sampling)
        self._plan: SamplingPlan | RefinePlan | None = None
        if settings.t0 is not None and not 1 <= settings.t0 < int(card.scheduler["num_train_timesteps"]):
            raise ModelError(f"t0 must be between 1 and {int(card.scheduler['num_train_timesteps']) - 1}, "
                             f"got {settings.t0}")
        if settings.sampler == "refine":
            self._plan = refine_plan(card.scheduler, {**card.sampling, "t0": settings.t0}, int(settings.steps or 1))
        elif card.architecture != "unet":
            self._plan = sampling_plan(card.scheduler, settings.sampler, int(settings.steps or 1))
        if not 0.0 <= settings.overlap < 1.0 or settings.sw_batch_size < 1 or settings.samples < 1:
            raise ModelError("overlap must be in [0, 1), sw_batch_size >= 1 and samples >= 1")
        self._network = self._ckpt.network.to(self._device)
        self._mapping = pre_post.IntensityMapping.from_card(card.intensity)
        expected = int(card.network.get("ct_channels", 1))
        if self._mapping.channels != expected:
            raise ModelError(f"model {card.name}: the card's CT mapping makes {self._mapping.channels} input "
                             f"channel(s) but the network takes {expected}; the card is inconsistent")
        self.calibration = UncertaintyCalibration.from_card(card.uncertainty, settings)
        if settings.samples >= 2:
            self.calibration.log_mismatch(card.name, card.version, settings)
        log.info("model %s %s (%s) on %s", card.name, card.version, card.architecture, self._device)

    @staticmethod
    def _resolve(settings: TranslationSettings, arch: str, sampling: dict[str, object]) -> TranslationSettings:
        """Settings with the card's defaults filled in (what the output's UIDs and provenance record)."""
        if settings.sampler not in SAMPLERS:
            raise ModelError(f"unknown sampler {settings.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        method = str(sampling.get("method", "noise"))
        if arch == "unet":
            return dataclasses.replace(settings, sampler="regression", steps=1, samples=1, t0=None)
        sampler = settings.sampler
        if sampler == "auto":
            sampler = "refine" if method == "refine" else "ddim"
        if sampler == "refine" and method != "refine":
            raise ModelError("this model was not trained for the refine sampler (no estimate); use ddim or ddpm")
        t0 = None
        if sampler == "refine":
            t0 = settings.t0 if settings.t0 is not None else int(sampling.get("t0", REFINE_SAMPLING["t0"]))
        elif settings.t0 is not None:
            raise ModelError(f"t0 applies to the refine sampler only, not {sampler}")
        # The card's default is for the card's own method; a refine model sampled from noise gets 20.
        default = int(sampling.get("default_steps", 20)) if (sampler == "refine") == (method == "refine") else 20
        steps = settings.steps if settings.steps is not None else default
        if steps < 1:
            raise ModelError(f"steps must be at least 1, got {steps}")
        if sampler == "refine" and settings.samples > len(FLIPS):
            if settings.steps is None:
                steps = max(steps, MIN_REFINE_STEPS_FOR_SAMPLES)
            elif steps < MIN_REFINE_STEPS_FOR_SAMPLES:
                raise ModelError(
                    f"steps {steps} with samples {settings.samples}: a refine model's single evaluation is its "
                    f"deterministic estimate and there are only {len(FLIPS)} test-time flips, so samples "
                    f"{len(FLIPS) + 1} and on would repeat earlier ones; use steps >= 2 (or leave steps to the "
                    f"model card, which then uses 2) or samples <= {len(FLIPS)}")
        return dataclasses.replace(settings, sampler=sampler, steps=steps, t0=t0)

    @property
    def device(self) -> str:
        """The compute device actually used, e.g. "cpu" or "cuda:0"."""
        return str(self._device)

    @property
    def precision(self) -> str:
        """The network's numerical precision: "fp32" on the CPU, "bf16" or "fp16" on CUDA."""
        return PRECISIONS[self._autocast]

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
        hu_model, mask_model = pre_post.to_model_grid(ct_hu, mask, grid, self._mapping)
        counter = EvalCounter()
        box = body_box(mask_model)
        channels = self._mapping.encode(hu_model[box])
        del hu_model
        samples = self._sample(channels, counter, progress)
        del channels
        raw = np.full(grid, -1.0, dtype=np.float32)
        raw[box] = mean_of(samples)[0, 0].numpy()
        if not np.isfinite(raw).all():
            raise ModelError("the network produced non-finite values; the checkpoint may be corrupt or diverged")
        enhanced = pre_post.postprocess_model_grid(raw, mask_model)
        back = pre_post.resample(enhanced, ct_hu.shape)
        mr, center, width = pre_post.to_uint12(back, mask)
        uncertainty = None
        if samples.shape[0] >= 2:
            uncertainty = sample_deviation(samples[:, 0].numpy(), box, raw, mask_model, ct_hu.shape, mask)
            uncertainty = self.calibration.apply(uncertainty, mask)
        seconds = time.perf_counter() - start
        log.info("translated a %s volume (model grid %s) in %.1f s, %d network evaluations",
                 ct_hu.shape, grid, seconds, counter.count)
        return TranslationResult(mr, center, width, self.model_info, self.settings, self.device, counter.count,
                                 seconds, precision=self.precision, uncertainty=uncertainty,
                                 calibration=self.calibration, window_edges=self._edges_on_ct_grid(box, grid, ct_hu.shape))

    def _edges_on_ct_grid(self, box: tuple[slice, ...], grid: tuple[int, ...],
                          shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """:func:`window_edges` of the cropped model grid, as planes of the CT grid (the
        resampling's half-voxel convention: model position p is CT position (p + 0.5) n/m - 0.5)."""
        crop = tuple(s.stop - s.start for s in box)
        spec = WindowSpec(self._ckpt.card.patch_size, self.settings.overlap)
        out = []
        for axis, planes in enumerate(window_edges(crop, spec)):
            model = planes + box[axis].start
            out.append((model + 0.5) * (shape[axis] / grid[axis]) - 0.5)
        return tuple(out)

    def _batch(self) -> int:
        """Patches per network call: on the CPU at least 2, since torch sends a single 3D patch of
        a narrow layer to a ~3x slower convolution path (measured: 0.24 s vs 0.07 s per 32^3 patch)."""
        if self._device.type == "cpu":
            return max(CPU_MIN_BATCH, self.settings.sw_batch_size)
        return self.settings.sw_batch_size

    def _samples_per_batch(self, voxels: int) -> int:
        """How many samples run together: all on a GPU (only patches live there); on the CPU as
        many as :data:`CPU_SAMPLE_BUDGET_BYTES` holds (about 4 float32 copies per sample)."""
        n = self.settings.samples
        if self._device.type != "cpu":
            return n
        return max(1, min(n, CPU_SAMPLE_BUDGET_BYTES // max(1, 16 * voxels)))

    def _sample(self, ct_model: np.ndarray, counter: EvalCounter,
                progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """The samples (N, 1, z, y, x) on the cropped model grid (one for the regression UNet);
        ``ct_model`` is (C, z, y, x), one channel per CT window."""
        card = self._ckpt.card
        spec = WindowSpec(card.patch_size, self.settings.overlap, self._batch(), self._device, self._autocast)
        ct = torch.from_numpy(ct_model)[None]
        try:
            with deterministic(self._device):
                out = self._run(ct, spec, counter, progress)
        except torch.cuda.OutOfMemoryError as exc:
            raise ModelError(f"out of GPU memory on {self.device}; lower sw_batch_size or use --device cpu") from exc
        except RuntimeError as exc:
            if "deterministic" not in str(exc):
                raise
            raise ModelError(f"the network uses an operation without a deterministic CUDA kernel on "
                             f"{self.device} ({str(exc)[:200]}); translate with --device cpu") from exc
        return out

    def _run(self, ct: torch.Tensor, spec: WindowSpec, counter: EvalCounter,
             progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """The sampler the settings name, on ``ct`` (1, C, z, y, x) on the model grid.

        Samples are grouped by their flip (:func:`.uncertainty.sample_flips`): each group runs on
        the CT flipped along its axes (a refine model's estimate once per group) and its samples are
        flipped back; the result is in sample order. The unflipped group is exactly the former
        computation, so one sample is unchanged."""
        seeds = sample_seeds(self.settings.seed, self.settings.samples)
        batch = self._samples_per_batch(int(ct.numel()))
        if self._plan is None:
            return predict_regression(self._network, ct, spec, counter, progress)
        flips = sample_flips(len(seeds))
        groups = list(dict.fromkeys(flips))
        out: list[torch.Tensor | None] = [None] * len(seeds)
        for group, flip in enumerate(groups):
            index = [i for i, f in enumerate(flips) if f == flip]
            dims = [axis + 2 for axis in flip]
            flipped = torch.flip(ct, dims) if dims else ct
            step = progress if progress is None or len(groups) == 1 else _group_progress(progress, group, len(groups))
            group_seeds = [seeds[i] for i in index]
            if isinstance(self._plan, RefinePlan):
                got = refine_samples(self._network, flipped, self._plan, spec, group_seeds, counter, step, batch)
            else:
                got = diffusion_samples(self._network, flipped, self._plan, spec, group_seeds, counter, step, batch)
            if dims:
                got = torch.flip(got, dims)
            for j, i in enumerate(index):
                out[i] = got[j % got.shape[0]:j % got.shape[0] + 1]
        return torch.cat([o for o in out if o is not None])


def _group_progress(progress: Callable[[int, int], None], group: int,
                    groups: int) -> Callable[[int, int], None]:
    """``progress`` of one flip group, reported as a share of all groups (scaled to 1000 steps)."""
    def report(done: int, total: int) -> None:
        progress(int(1000 * (group + done / max(total, 1)) / groups), 1000)
    return report


def sample_deviation(samples: np.ndarray, box: tuple[slice, ...], mean: np.ndarray, mask_model: np.ndarray,
                     shape: tuple[int, ...], mask: np.ndarray) -> np.ndarray:
    """Per-voxel standard deviation of ``samples`` (N, cropped model grid) in MR pixel units on the
    CT grid (float32, zero outside ``mask``).

    Each sample, placed like the mean (``-1`` outside ``box``), goes through the post-processing
    fitted on ``mean`` (:class:`pre_post.PostMapping`), times 4095 like the MR; the population
    standard deviation (ddof 0) is taken on the model grid in float64 and resampled to the CT grid
    as the MR is (linear), which is cheaper than resampling every sample and equal where the
    deviation varies slowly. Identical samples give exactly 0.
    """
    mapping = pre_post.PostMapping.fit(mean, mask_model)
    full = np.full(mean.shape, -1.0, dtype=np.float32)
    mapped = []
    for sample in samples:
        full[box] = sample
        mapped.append(mapping(full)[box].astype(np.float64) * pre_post.MAX_12BIT)
    stack = np.stack(mapped)
    centre = stack.mean(axis=0)
    deviation = np.zeros(mean.shape, dtype=np.float32)
    deviation[box] = np.sqrt(np.mean((stack - centre) ** 2, axis=0))
    deviation[~mask_model] = 0.0
    back = pre_post.resample(deviation, shape)
    back[~mask] = 0.0
    return np.maximum(back, 0.0).astype(np.float32, copy=False)
