"""The torch training loop: random patches, AdamW, optional EMA, resumable state, DDP.

Input is a list of cases (:class:`PreparedCase` in memory, or cases of the grid cache read one
patch at a time; CT channels and MR on the model grid, all in [-1, 1]). Diffusion architectures
learn the scheduler's target (v) from concat(x_t, CT); the regression UNet learns MR from CT
with an L1 loss. Patches are cut in DataLoader workers; each iteration's batch has its own seed
(seed, rank, iteration), so it depends neither on the workers nor on where a run resumed. The
``last.pt`` file in the run directory holds weights, optimiser, EMA, iteration, the noise
generator's state and the gradient scaler's; a run started again with the same output directory
resumes from it, on any device (a run begun on the CPU goes on on a GPU and the other way) and
with any number of processes (torchrun: :mod:`.distributed`). The forward pass runs under
autocast where asked: bf16 where the GPU has it (no loss scaling needed) or on the CPU, else fp16
with a gradient scaler. Patches and random numbers are drawn on the CPU, so a run's data does not
depend on the device."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import CheckpointError, DataError, ModelError
from . import distributed
from .diffusion import DEFAULT_SAMPLING, training_scheduler, training_target
from .networks import build_network
from .translator import PRECISIONS, resolve_device

log = logging.getLogger(__name__)

STATE_FILE = "last.pt"
MASK_BIAS = 0.9  # probability that a patch is centred on a body voxel
MAX_ZOOM = 4.0  # largest scale augmentation factor (train --zoom)
#: Structure paste (train --paste): blobs per pasted patch, blob radius range in voxels, MR bins
#: over which source voxels are drawn evenly.
PASTE_BLOBS = (2, 6)
PASTE_RADIUS = (1.0, 6.0)
PASTE_BINS = 16


@dataclass
class PreparedCase:
    """One training pair on the model grid: CT channels (C, z, y, x) and MR in [-1, 1], body mask."""

    name: str
    ct: np.ndarray
    mr: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class TrainSettings:
    """Everything that defines a training run's budget and randomness."""

    arch: str
    network: dict[str, Any]
    scheduler: dict[str, Any]
    iterations: int = 1000
    batch_size: int = 2
    patch: int = 32
    lr: float = 2e-4
    seed: int = 0
    val_every: int = 100
    ema_decay: float = 0.999
    #: "cosine": the learning rate falls from ``lr`` to 5 % of it over ``iterations``; "constant".
    lr_schedule: str = "cosine"
    #: Scale augmentation: each training patch is cut at a scale drawn log-uniformly from
    #: [1/zoom, zoom] and resampled to ``patch`` (1.0: off), so anatomy of every size is seen.
    zoom: float = 1.0
    #: Structure paste augmentation: the share of training patches that get small blobs of CT and
    #: MR copied from elsewhere in the same case (:func:`paste_structures`; 0.0: off).
    paste: float = 0.0
    sampling: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLING))


@dataclass
class TrainOutcome:
    """What a run produced: the final network (EMA weights if used), iterations and losses."""

    network: nn.Module
    iterations: int
    last_loss: float
    val_losses: list[tuple[int, float]]
    seconds: float
    resumed_from: int
    #: "fp32" (CPU), or the autocast dtype of a GPU run ("bf16", "fp16").
    precision: str = "fp32"
    #: This process's rank and the number of processes that trained together (torchrun).
    rank: int = 0
    world_size: int = 1


def _pad_to(arr: np.ndarray, size: int, value: float) -> np.ndarray:
    """Pad the last three (spatial) axes to at least ``size``."""
    pads = [(0, 0)] * (arr.ndim - 3) + [(0, max(0, size - n)) for n in arr.shape[-3:]]
    return np.pad(arr, pads, constant_values=value) if any(p[1] for p in pads) else arr


def pad_case(case: PreparedCase, patch: int) -> PreparedCase:
    """Pad a case with air/background so every axis holds at least one patch."""
    return PreparedCase(case.name, _pad_to(case.ct, patch, -1.0), _pad_to(case.mr, patch, -1.0),
                        _pad_to(case.mask, patch, False))


class PatchCase(Protocol):
    """What the sampler reads patches from: a case in memory, or one in the grid cache on disk
    (``training.grid_cache.CachedCase``: read through memory maps, one patch at a time)."""

    name: str
    shape: tuple[int, int, int]
    body_voxels: int

    def body_voxel(self, index: int) -> np.ndarray: ...

    def read(self, corner: tuple[int, int, int], size: int) -> tuple[np.ndarray, np.ndarray]: ...


class MemoryCase:
    """A :class:`PreparedCase` held in memory, read as a :class:`PatchCase`."""

    def __init__(self, case: PreparedCase) -> None:
        self.name = case.name
        self.case = case
        self.shape = tuple(int(n) for n in case.mask.shape)
        self._body = np.argwhere(case.mask)
        self.body_voxels = len(self._body)

    def body_voxel(self, index: int) -> np.ndarray:
        return self._body[index]

    def read(self, corner: tuple[int, int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
        sl = tuple(slice(c, c + size) for c in corner)
        ct, mr = self.case.ct[(slice(None), *sl)], self.case.mr[sl]
        return _pad_to(ct, size, -1.0), _pad_to(mr, size, -1.0)


class PatchSampler:
    """Random patches, centred on a body voxel with probability ``MASK_BIAS``.

    The batch of iteration i is drawn from its own generator, seeded by (seed, rank, i): a batch
    depends on neither the process that made it (DataLoader workers) nor where a run was resumed,
    and every rank of a distributed run draws patches of its own.

    With ``zoom`` > 1 each training patch is cut with side ``patch * s``, s log-uniform in
    [1/zoom, zoom], and resampled (trilinear) to ``patch``: the network sees a head or a bladder
    at sizes the training cases do not have (a child's head looks like an adult's at s < 1), as
    the 2 mm grid keeps every case at its own size in mm.

    With ``paste`` > 0 that share of training patches gets small structures pasted in from another
    patch of the same case (:func:`paste_structures`). Validation batches are never augmented."""

    def __init__(self, cases: Sequence[PreparedCase | PatchCase], patch: int, seed: int = 0, rank: int = 0,
                 zoom: float = 1.0, paste: float = 0.0) -> None:
        if not cases:
            raise DataError("no training cases: the data folder holds no usable case")
        if not 1.0 <= zoom <= MAX_ZOOM:
            raise DataError(f"zoom must be between 1 (off) and {MAX_ZOOM:g}, got {zoom}")
        if not 0.0 <= paste <= 1.0:
            raise DataError(f"paste must be a share of patches in [0, 1], got {paste}")
        self.cases: list[PatchCase] = [MemoryCase(c) if isinstance(c, PreparedCase) else c  # type: ignore[misc]
                                       for c in cases]
        self.patch, self.seed, self.rank, self.zoom, self.paste = patch, seed, rank, zoom, paste

    def _corner(self, rng: np.random.Generator, case: PatchCase, size: int) -> tuple[int, int, int]:
        if case.body_voxels and rng.random() < MASK_BIAS:
            centre = case.body_voxel(int(rng.integers(case.body_voxels)))
        else:
            centre = np.array([rng.integers(n) for n in case.shape])
        return tuple(int(max(0, min(c - size // 2, n - size)))  # type: ignore[return-value]
                     for c, n in zip(centre, case.shape))

    def _side(self, rng: np.random.Generator) -> int:
        """The side of the region a patch is cut from (``patch`` without zoom)."""
        if self.zoom == 1.0:
            return self.patch  # draws nothing: runs without zoom keep their batches
        scale = math.exp(rng.uniform(-math.log(self.zoom), math.log(self.zoom)))
        return max(2, int(round(self.patch * scale)))

    def batch(self, rng: np.random.Generator, size: int, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(ct, mr) patches: (size, C, P, P, P) and (size, 1, P, P, P) float32 (zoomed if ``augment``)."""
        cts, mrs = [], []
        for _ in range(size):
            case = self.cases[int(rng.integers(len(self.cases)))]
            side = self._side(rng) if augment else self.patch
            ct, mr = case.read(self._corner(rng, case, side), side)
            if augment and self.paste and rng.random() < self.paste:  # draws nothing when off
                source_ct, source_mr = case.read(self._corner(rng, case, side), side)
                ct, mr = ct.copy(), mr.copy()
                paste_structures(rng, ct, mr, source_ct, source_mr)
            if side != self.patch:
                ct, mr = resample_patch(ct, mr, self.patch)
            cts.append(ct)
            mrs.append(mr)
        return torch.from_numpy(np.stack(cts)), torch.from_numpy(np.stack(mrs)[:, None].copy())

    def batch_at(self, iteration: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of ``iteration`` for this rank."""
        return self.batch(np.random.default_rng([self.seed, self.rank, iteration]), size)


def blob_mask(rng: np.random.Generator, radius: tuple[float, float] = PASTE_RADIUS) -> np.ndarray:
    """A random lobulated blob: the union of two turned ellipsoids, radii log-uniform in
    ``radius`` voxels and stretched 0.6-1.4 per axis, the second offset by up to one radius.
    Returned as a boolean cube centred on the blob (odd side)."""
    size = float(np.exp(rng.uniform(np.log(radius[0]), np.log(radius[1]))))
    half = int(np.ceil(2.0 * 1.4 * size)) + 1
    grid = np.stack(np.meshgrid(*[np.arange(-half, half + 1, dtype=np.float32)] * 3, indexing="ij"))
    mask = np.zeros(grid.shape[1:], bool)
    for lobe in range(2):
        turn, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        radii = size * rng.uniform(0.6, 1.4, 3) * (1.0 if lobe == 0 else rng.uniform(0.5, 0.9))
        centre = np.zeros(3) if lobe == 0 else rng.uniform(-1.0, 1.0, 3) * size
        local = np.tensordot(turn.astype(np.float32), grid - centre.astype(np.float32)[:, None, None, None], 1)
        mask |= ((local / radii.astype(np.float32)[:, None, None, None]) ** 2).sum(0) <= 1.0
    return mask


def paste_structures(rng: np.random.Generator, ct: np.ndarray, mr: np.ndarray,
                     source_ct: np.ndarray, source_mr: np.ndarray) -> int:
    """Paste 2-6 small blobs (:func:`blob_mask`, radius 2-12 mm at 2 mm) of a source patch into a
    patch, CT channels and MR alike, in place; returns the voxels written.

    Why: a network trained on whole anatomy learns tissue from its surroundings, and then paints a
    ventricle or an eye narrower than about 15 mm with the brightness of the white matter around
    it. A blob of one case's own CT and MR moved elsewhere in that case is still a true pair (the
    T1w value of a tissue does not depend on what surrounds it), so the network learns to read
    small structures from their CT. Source voxels are drawn evenly over :data:`PASTE_BINS` bins of
    the source MR, so rare tissues (fluid, bone, marrow) are pasted as often as common ones."""
    bins = np.clip(((source_mr + 1.0) * (PASTE_BINS / 2.0)).astype(np.int64), 0, PASTE_BINS - 1).ravel()
    weight = 1.0 / np.bincount(bins, minlength=PASTE_BINS)[bins]
    shape = np.array(mr.shape)
    changed = 0
    for _ in range(int(rng.integers(PASTE_BLOBS[0], PASTE_BLOBS[1] + 1))):
        source = np.array(np.unravel_index(int(rng.choice(bins.size, p=weight / weight.sum())), source_mr.shape))
        target = np.array([int(rng.integers(n)) for n in shape])
        mask = blob_mask(rng)
        offsets = np.argwhere(mask) - np.array(mask.shape) // 2
        src, dst = source + offsets, target + offsets
        inside = np.all((src >= 0) & (src < shape) & (dst >= 0) & (dst < shape), axis=1)
        src, dst = src[inside], dst[inside]
        ct[:, dst[:, 0], dst[:, 1], dst[:, 2]] = source_ct[:, src[:, 0], src[:, 1], src[:, 2]]
        mr[dst[:, 0], dst[:, 1], dst[:, 2]] = source_mr[src[:, 0], src[:, 1], src[:, 2]]
        changed += len(dst)
    return changed


def resample_patch(ct: np.ndarray, mr: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """CT channels (C, s, s, s) and MR (s, s, s) resampled to side ``patch``, trilinear over cell
    centres (``align_corners=False``): the same field of view, seen at another voxel size."""
    both = torch.from_numpy(np.concatenate([ct, mr[None]], axis=0)[None].astype(np.float32, copy=False))
    out = F.interpolate(both, size=(patch,) * 3, mode="trilinear", align_corners=False)[0].numpy()
    return np.ascontiguousarray(out[:-1]), np.ascontiguousarray(out[-1])


class PatchStream(IterableDataset):  # type: ignore[type-arg]
    """Batches of iterations ``start``..``stop`` for a DataLoader: worker w of W makes those of
    the iterations w, w + W, ...; the DataLoader takes them in turn, so they arrive in order."""

    def __init__(self, sampler: PatchSampler, batch_size: int, start: int, stop: int) -> None:
        self.sampler, self.batch_size, self.start, self.stop = sampler, batch_size, start, stop

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        for iteration in range(self.start + first, self.stop, step):
            yield (iteration, *self.sampler.batch_at(iteration, self.batch_size))


def patch_loader(sampler: PatchSampler, batch_size: int, start: int, stop: int, workers: int,
                 pin_memory: bool) -> DataLoader:  # type: ignore[type-arg]
    """The DataLoader of :class:`PatchStream` (``workers`` processes; 0: in this process)."""
    return DataLoader(PatchStream(sampler, batch_size, start, stop), batch_size=None, num_workers=workers,
                      pin_memory=pin_memory, prefetch_factor=4 if workers else None)


class Objective:
    """The loss of one architecture on a batch of (ct, mr) patches.

    - ``unet``: L1 between the prediction and the MR.
    - diffusion, sampling method ``noise``: the scheduler's target (v) at t uniform over all T steps.
    - diffusion, method ``refine`` (the enhanced model): each patch is, with probability
      ``estimate_fraction``, an *estimate* patch (noisy input all zero, t = T-1, L1 between the x0
      read from v and the MR: the deterministic estimate sampling starts from), otherwise a
      *refinement* patch (v target at t uniform in 1..t0: only the timesteps sampling visits,
      after Fast-DDPM, so no budget is spent on t > t0).
    """

    def __init__(self, arch: str, scheduler_config: dict[str, Any],
                 sampling: dict[str, Any] | None = None) -> None:
        self.arch = arch
        self.scheduler = training_scheduler(scheduler_config) if arch != "unet" else None
        sampling = sampling or DEFAULT_SAMPLING
        self.refine = self.scheduler is not None and sampling.get("method") == "refine"
        self.t0 = int(sampling.get("t0", 0))
        self.estimate_fraction = float(sampling.get("estimate_fraction", 0.5))

    def loss(self, network: nn.Module, ct: torch.Tensor, mr: torch.Tensor, gen: torch.Generator,
             autocast: torch.dtype | None = None) -> torch.Tensor:
        """The batch loss (float32). ``ct`` and ``mr`` are on the network's device; random numbers
        come from ``gen`` on the CPU; ``autocast`` runs the forward pass in that dtype."""
        run = _Forward(network, ct.device, autocast)
        if self.scheduler is None:
            return F.l1_loss(run(ct, None), mr)
        if self.refine:
            return self._refine_loss(run, ct, mr, gen)
        noise = torch.randn(mr.shape, generator=gen).to(mr.device)
        t = torch.randint(0, self.scheduler.num_train_timesteps, (mr.shape[0],), generator=gen).to(mr.device)
        noisy = self.scheduler.add_noise(mr, noise, t)
        target = training_target(self.scheduler, mr, noise, t)
        return F.mse_loss(run(torch.cat([noisy, ct], dim=1), t), target)

    def _refine_loss(self, run: _Forward, ct: torch.Tensor, mr: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
        scheduler = self.scheduler
        if scheduler is None:
            raise CheckpointError("the refine objective needs a diffusion architecture")
        batch, device = mr.shape[0], mr.device
        last = scheduler.num_train_timesteps - 1
        is_estimate = (torch.rand(batch, generator=gen) < self.estimate_fraction).to(device)
        noise = torch.randn(mr.shape, generator=gen).to(device)
        t = torch.randint(1, self.t0 + 1, (batch,), generator=gen).to(device)
        t = torch.where(is_estimate, torch.full_like(t, last), t)
        noisy = scheduler.add_noise(mr, noise, t)
        noisy = torch.where(is_estimate[:, None, None, None, None], torch.zeros_like(noisy), noisy)
        v = run(torch.cat([noisy, ct], dim=1), t)
        target = training_target(scheduler, mr, noise, t)
        alpha = scheduler.alphas_cumprod.to(device)[t].to(v.dtype)[:, None, None, None, None]
        x0 = alpha.sqrt() * noisy - (1 - alpha).sqrt() * v
        per_estimate = (x0 - mr).abs().flatten(1).mean(1)
        per_refine = (v - target).pow(2).flatten(1).mean(1)
        return torch.where(is_estimate, per_estimate, per_refine).mean()


class _Forward:
    """``network(x, t)`` under autocast (when a dtype is given), output as float32."""

    def __init__(self, network: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
        self.network, self.device, self.dtype = network, device, dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if self.dtype is None:
            return self.network(x, t).float()
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            return self.network(x, t).float()


def _save_state(path: Path, iteration: int, network: nn.Module, ema: nn.Module | None,
                opt: torch.optim.Optimizer, gen: torch.Generator, settings: TrainSettings,
                val_losses: list[tuple[int, float]], scaler: torch.amp.GradScaler | None, world: int) -> None:
    """Write the run state atomically. Patches need no saved state (each iteration's batch has
    its own seed); the noise generator's is rank 0's."""
    state = {
        "iteration": iteration, "network": network.state_dict(), "optimizer": opt.state_dict(),
        "ema": ema.state_dict() if ema is not None else None, "rng": {"torch": gen.get_state()},
        "settings": asdict(settings), "val_losses": val_losses,
        "scaler": scaler.state_dict() if scaler is not None else None, "world_size": world,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_state(path: Path, settings: TrainSettings) -> dict[str, Any] | None:
    """The saved run state, its tensors on the CPU whatever device wrote it (they move to this
    run's device as they are loaded), or None when there is none."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot resume from a corrupt training state ({exc}); delete it to restart") from exc
    saved = state.get("settings", {})
    if (saved.get("arch") != settings.arch or saved.get("network") != settings.network
            or saved.get("sampling", DEFAULT_SAMPLING) != settings.sampling):
        raise CheckpointError(f"{path}: the saved run used another architecture or network config; "
                              "use a new --out directory or the original options")
    return state


def _load_initial(network: nn.Module, init: Mapping[str, torch.Tensor]) -> None:
    """Load initial weights into ``network``; CheckpointError if they do not fit it."""
    try:
        network.load_state_dict(init, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CheckpointError(f"the initial weights do not fit this run's network ({first})") from exc


def _validate(network: nn.Module, objective: Objective, batches: list[tuple[torch.Tensor, torch.Tensor]],
              seed: int, device: torch.device, autocast: torch.dtype | None) -> float:
    gen = torch.Generator().manual_seed(seed)
    network.eval()
    with torch.no_grad():
        total = sum(float(objective.loss(network, ct.to(device), mr.to(device), gen, autocast)) for ct, mr in batches)
    network.train()
    return total / max(1, len(batches))


def _ema_update(ema: nn.Module, network: nn.Module, decay: float) -> None:
    """Exponential moving average of the parameters; buffers (BatchNorm's running statistics)
    are copied, so the averaged network normalises with the statistics the training reached."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), network.parameters()):
            e.lerp_(p, 1.0 - decay)
        for eb, b in zip(ema.buffers(), network.buffers()):
            eb.copy_(b)


def learning_rate(settings: TrainSettings, iteration: int) -> float:
    """The learning rate at ``iteration``: constant, or cosine from ``lr`` down to 5 % of it."""
    if settings.lr_schedule == "constant":
        return settings.lr
    progress = min(1.0, iteration / max(1, settings.iterations))
    return settings.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))




def resolve_precision(device: str, precision: str = "auto") -> tuple[torch.device, torch.dtype | None]:
    """The device and the autocast dtype of a run: ``auto`` is bf16 on a GPU that has it, fp16
    otherwise, and fp32 on the CPU; ``bf16`` also runs on the CPU (autocast), ``fp16`` needs a GPU."""
    dev, autocast = resolve_device(device)
    if precision == "auto":
        return dev, autocast
    chosen = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, "?")
    if chosen == "?":
        raise ModelError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if chosen == torch.float16 and dev.type != "cuda":
        raise ModelError("fp16 training needs a GPU (its gradient scaler is CUDA's); on the CPU use bf16 or fp32")
    if chosen == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelError("this GPU has no bf16; use --precision fp16 (with a gradient scaler) or auto")
    return dev, chosen  # type: ignore[return-value]


def train(cases: Sequence[PreparedCase | PatchCase], settings: TrainSettings, run_dir: Path,
          on_step: Callable[[int, float], None] | None = None, device: str = "cpu",
          max_seconds: float | None = None, precision: str = "auto", workers: int = 0,
          init: Mapping[str, torch.Tensor] | None = None) -> TrainOutcome:
    """Train (or resume) for ``settings.iterations`` iterations on ``device``; state saved in ``run_dir``.

    ``init`` (a state dict of the same network) starts a new run's weights and their average
    from trained ones (fine-tuning); a run that resumes from its saved state ignores it.

    ``max_seconds`` ends the run early, state saved, once that much time has passed (a lease on a
    GPU host runs out); the outcome says how far it got and the same command resumes. Patches
    are made in ``workers`` DataLoader processes. In a process group (:mod:`.distributed`,
    torchrun) the network is wrapped in DistributedDataParallel: gradients are averaged over
    the ranks, each rank draws its own patches and noise, and rank 0 alone validates, reads and
    writes the state (the others get it from rank 0); a run resumes with any number of ranks."""
    start = time.perf_counter()
    rank, world = distributed.rank(), distributed.world_size()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    dev, autocast = resolve_precision(device, precision)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN pick its fastest 3D kernels
    torch.manual_seed(settings.seed)
    network = build_network(settings.arch, settings.network).to(dev)
    network.train()
    ema = copy.deepcopy(network).requires_grad_(False) if settings.ema_decay > 0 else None
    opt = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(distributed.rank_seed(settings.seed, rank))
    sampler = PatchSampler(cases, settings.patch, settings.seed, rank, settings.zoom, settings.paste)
    objective = Objective(settings.arch, settings.scheduler, settings.sampling)
    val_batches = []
    if rank == 0:
        val_rng = np.random.default_rng(settings.seed + 1)
        val_batches = [sampler.batch(val_rng, settings.batch_size, augment=False) for _ in range(4)]
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None
    iteration, val_losses, loss_value = 0, [], math.nan
    # rank 0 alone reads the state (as it alone writes it) and hands it to the others
    state = distributed.from_rank0(_load_state(run_dir / STATE_FILE, settings) if rank == 0 else None)
    if state is not None:
        iteration, val_losses = int(state["iteration"]), list(state["val_losses"])
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])  # its tensors follow the parameters' device
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
        if rank == 0:
            gen.set_state(state["rng"]["torch"])
        else:
            gen.manual_seed(distributed.rank_seed(settings.seed, rank, iteration))
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        log.info("resuming %s training at iteration %d (saved by %d process(es), now %d)", settings.arch,
                 iteration, int(state.get("world_size", 1)), world)
        if init is not None:
            log.info("the run state holds its own weights: the initial weights given are not used")
    elif init is not None:
        _load_initial(network, init)
        if ema is not None:
            ema.load_state_dict(network.state_dict())
        log.info("starting %s training from the given weights (fresh optimiser and schedule)", settings.arch)
    resumed_from = iteration
    model: nn.Module = network
    if world > 1:
        model = DistributedDataParallel(network, device_ids=[dev.index] if dev.type == "cuda" else None)

    def save() -> None:
        if rank == 0:
            _save_state(run_dir / STATE_FILE, iteration, network, ema, opt, gen, settings, val_losses, scaler, world)

    batches = patch_loader(sampler, settings.batch_size, iteration, settings.iterations, workers, dev.type == "cuda")
    try:
        for expected, ct, mr in batches:
            if expected != iteration:
                raise CheckpointError(f"patch stream out of order: batch {expected} at iteration {iteration}")
            late = max_seconds is not None and time.perf_counter() - start > max_seconds
            if distributed.any_rank(late, dev):
                log.warning("stopping at iteration %d of %d: the time limit of %.0f s is reached",
                            iteration, settings.iterations, max_seconds or 0.0)
                break
            for group in opt.param_groups:
                group["lr"] = learning_rate(settings, iteration)
            loss = objective.loss(model, ct.to(dev, non_blocking=True), mr.to(dev, non_blocking=True), gen, autocast)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(network.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(network.parameters(), 1.0)
                opt.step()
            if ema is not None:
                _ema_update(ema, network, min(settings.ema_decay, (1 + iteration) / (10 + iteration)))
            iteration += 1
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise CheckpointError(f"training diverged at iteration {iteration} (loss {loss_value}); lower --lr")
            if on_step is not None:
                on_step(iteration, loss_value)
            if settings.val_every and iteration % settings.val_every == 0 and rank == 0:
                val_losses.append((iteration, _validate(ema or network, objective, val_batches, settings.seed,
                                                        dev, autocast)))
                log.info("iteration %d: train loss %.4f, validation loss %.4f", iteration, loss_value, val_losses[-1][1])
                save()
    finally:
        del batches  # ends the DataLoader's workers
        save()
    final = (ema if ema is not None else network).cpu()
    final.eval()
    return TrainOutcome(final, iteration, loss_value, val_losses, time.perf_counter() - start, resumed_from,
                        PRECISIONS[autocast], rank, world)
