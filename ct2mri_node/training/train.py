"""Training orchestration: SynthRAD-layout (or prepared) folder -> prepared cases -> trainer -> checkpoint.

Every case is resampled once to the model spacing (index space, as at inference; a prepared
folder, :mod:`.prepared`, holds that already), the CT becomes one channel per CT window of the
card's mapping and the MR is normalised per case, anchored on fat by default
(:func:`pre_post.normalise_mr`). ``run_training`` writes the run state (``last.pt``, resumable)
and, at the end, the checkpoint (``model.safetensors`` + ``card.json``) into the output directory.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError, DataError
from ..model import pre_post
from ..model.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from ..model.diffusion import sampling_config, scheduler_config
from ..model.networks import ARCHITECTURES, matched_base_channels, network_config, patch_multiple
from ..model.trainer import MAX_ZOOM, STATE_FILE, PreparedCase, TrainOutcome, TrainSettings, train
from . import grid_cache
from . import prepared as prep

if TYPE_CHECKING:
    from .pairs import PairedCase

log = logging.getLogger(__name__)

VERSION = "0.3.2"
#: ``--ct-input``: the CT windows (default) or the single linear -1024..2000 HU mapping of v0.2.
CT_INPUTS: tuple[str, ...] = ("windows", "linear")
DEMO_DESCRIPTION = ("demonstration model trained on synthetic data (randomised phantoms and ICBM152-derived heads), "
                    "not on patients; not for diagnosis")


@dataclass(frozen=True)
class TrainRequest:
    """What `ct2mri-node train` asks for (command-line options)."""

    data: Path
    out: Path
    arch: str = "enhanced"
    iterations: int = 2000
    batch_size: int = 2
    patch: int = 32
    lr: float = 2e-4
    seed: int = 0
    spacing_mm: float = 2.0
    base_channels: int = 16
    val_every: int = 100
    method: str | None = None   # sampling method; None: "refine" for enhanced, "noise" for ddpm
    t0: int = 400               # refine: the timestep sampling starts from
    estimate_fraction: float = 0.5   # refine: share of each batch trained as the one-pass estimate
    ct_input: str = "windows"   # "windows" (one channel per CT window) or "linear" (v0.2)
    norm: str = "batch"         # feature normalisation: "batch" or "group" (v0.2)
    mr_norm: str = "fat"        # MR target: "fat" (anchored on fat) or "percentile" (v0.2)
    levels: int = 3
    device: str = "cpu"         # auto | cpu | cuda | cuda:N
    max_minutes: float | None = None   # stop early (state saved, checkpoint written) after this long
    weights_dtype: str = "float32"     # how the checkpoint stores its weights: float32 or float16
    precision: str = "auto"     # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    zoom: float = 1.0           # scale augmentation: patches cut at 1/zoom..zoom and resampled (1: off)
    paste: float = 0.0          # structure paste: share of patches with small blobs moved within the case (0: off)
    workers: int = 2            # DataLoader processes making patches (0: in the training process)
    cache: Path | None = None   # grid cache folder (default <out>/grid-cache)
    init: str | None = None     # start from a trained checkpoint's weights ("bundled" or a folder); fine-tuning
    name: str | None = None
    description: str = DEMO_DESCRIPTION
    command: str = field(default_factory=lambda: shlex.join(["ct2mri-node", *sys.argv[1:]]))


def validate(request: TrainRequest) -> None:
    """Raise ConfigError for options that cannot make a training run."""
    if request.arch not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {request.arch!r}")
    multiple = patch_multiple(network_config(request.arch, levels=request.levels))
    if request.patch < multiple or request.patch % multiple:
        raise ConfigError(f"--patch must be a positive multiple of {multiple}, got {request.patch}")
    for name in ("iterations", "batch_size", "base_channels"):
        if getattr(request, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if request.lr <= 0 or request.spacing_mm <= 0 or request.val_every < 0:
        raise ConfigError("--lr and --spacing must be positive and --val-every not negative")
    if request.method not in (None, "noise", "refine"):
        raise ConfigError(f"--method must be noise or refine, got {request.method!r}")
    if request.arch == "unet" and request.method is not None:
        raise ConfigError("--method applies to the diffusion architectures (enhanced, ddpm), not to unet")
    if not 1 <= request.t0 < 1000:
        raise ConfigError(f"--t0 must be between 1 and 999, got {request.t0}")
    if not 0.0 <= request.estimate_fraction <= 1.0:
        raise ConfigError(f"--estimate-fraction must be in [0, 1], got {request.estimate_fraction}")
    if request.ct_input not in CT_INPUTS:
        raise ConfigError(f"--ct-input must be one of {', '.join(CT_INPUTS)}, got {request.ct_input!r}")
    if request.norm not in ("batch", "group"):
        raise ConfigError(f"--norm must be batch or group, got {request.norm!r}")
    if request.mr_norm not in pre_post.MR_METHODS:
        raise ConfigError(f"--mr-norm must be one of {', '.join(pre_post.MR_METHODS)}, got {request.mr_norm!r}")
    if request.weights_dtype not in ("float32", "float16"):
        raise ConfigError(f"--weights must be float32 or float16, got {request.weights_dtype!r}")
    if request.max_minutes is not None and request.max_minutes <= 0:
        raise ConfigError("--max-minutes must be positive")
    if request.levels < 2:
        raise ConfigError("--levels must be at least 2")
    if request.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"--precision must be auto, fp32, bf16 or fp16, got {request.precision!r}")
    if request.workers < 0:
        raise ConfigError("--workers must not be negative")
    if not 1.0 <= request.zoom <= MAX_ZOOM:
        raise ConfigError(f"--zoom must be between 1 (off) and {MAX_ZOOM:g}, got {request.zoom}")
    if not 0.0 <= request.paste <= 1.0:
        raise ConfigError(f"--paste must be a share of patches between 0 (off) and 1, got {request.paste}")


def sampling(request: TrainRequest) -> dict[str, object]:
    """The card's sampling section: estimate-then-refine for the enhanced model, from noise for the plain DDPM."""
    if request.arch == "unet":
        return sampling_config("noise", default_steps=1)
    method = request.method or ("refine" if request.arch == "enhanced" else "noise")
    if method == "refine":
        return sampling_config(method, t0=request.t0, estimate_fraction=request.estimate_fraction)
    return sampling_config(method)


def mapping(request: TrainRequest) -> pre_post.IntensityMapping:
    """The CT mapping ``--ct-input`` names."""
    return pre_post.IntensityMapping() if request.ct_input == "windows" else pre_post.IntensityMapping.linear()


def network(request: TrainRequest) -> dict[str, object]:
    """The network config of the run (width matched across architectures, see :func:`base_channels`)."""
    shape = {"ct_channels": mapping(request).channels, "norm": request.norm, "levels": request.levels}
    reference = network_config("enhanced", base_channels=request.base_channels, **shape)
    width = request.base_channels if request.arch == "enhanced" else matched_base_channels(request.arch, reference)
    return network_config(request.arch, **{**shape, "base_channels": width})


def prepare_case(case: PairedCase, spacing_mm: float, mapping: pre_post.IntensityMapping,
                 mr_method: str = "fat") -> PreparedCase:
    """Resample a paired case to the model spacing; CT channels and MR target in [-1, 1]."""
    grid = prep.to_grid(case.name, case.ct, case.mr, case.mask, case.spacing, spacing_mm)
    return prep.finish(grid, mapping, mr_method)


def load_prepared(data: Path, spacing_mm: float, mapping: pre_post.IntensityMapping,
                  mr_method: str = "fat") -> list[PreparedCase]:
    """Every case of a prepared folder or of a SynthRAD-layout folder, prepared for training.

    Cases of an evaluation-only family (held-out, independent) are refused: DataError."""
    if prep.is_prepared(data):
        return [prep.finish(case, mapping, mr_method) for case in prep.read_prepared(data, spacing_mm)]
    from . import pairs

    prepared = []
    for case_dir in pairs.list_cases(data):
        prep.check_training_family(case_dir.name, prep.case_family(case_dir))
        prepared.append(prepare_case(pairs.load_case(case_dir), spacing_mm, mapping, mr_method))
        log.debug("prepared case %s: %s", case_dir.name, prepared[-1].mask.shape)
    return prepared


def describe_data(data: Path) -> str:
    """"N paired CT/MR cases from DIR (family: count, ...)", from each case's phantom.json."""
    if prep.is_prepared(data):
        return prep.describe(data)
    from . import pairs

    counts: dict[str, int] = {}
    cases = pairs.list_cases(data)
    for case_dir in cases:
        family = prep.case_family(case_dir)
        family = "unlabelled (SynthRAD layout)" if family == "unlabelled" else family
        counts[family] = counts.get(family, 0) + 1
    parts = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    return f"{len(cases)} paired CT/MR cases from {data.name} ({parts}); synthetic data, no patient data"


def _data_summary(data: Path, n_cases: int) -> str:
    try:
        return describe_data(data)
    except DataError:  # cases given in memory (tests), not from the folder
        return f"{n_cases} paired CT/MR cases"


def initial_weights(init: str, request: TrainRequest, settings: TrainSettings,
                    ct_mapping: pre_post.IntensityMapping) -> tuple[dict[str, Any], str]:
    """The weights of checkpoint ``init`` and a line saying whose they are (for the card).

    The checkpoint must be the network this run trains, on the same input and target mapping:
    ConfigError says which of them differs."""
    try:
        checkpoint = load_checkpoint(init)
    except CheckpointError as exc:
        raise ConfigError(f"--init {init}: {exc}") from exc
    card = checkpoint.card
    wanted = {"architecture": request.arch, "network": settings.network, "sampling": settings.sampling,
              "intensity": ct_mapping.to_card(request.mr_norm), "spacing": [request.spacing_mm] * 3}
    # the card's sampling may carry notes added after training (evaluation): compare the run's keys
    found = {"architecture": card.architecture, "network": card.network,
             "sampling": {key: card.sampling.get(key) for key in settings.sampling},
             "intensity": card.intensity, "spacing": [float(v) for v in card.spacing_mm]}
    differ = [key for key in wanted if _plain(wanted[key]) != _plain(found[key])]
    if differ:
        raise ConfigError(f"--init {init}: its {', '.join(differ)} differ(s) from this run's; "
                          "give the options the checkpoint was trained with (its card.json lists them)")
    origin = f"{card.name} {card.version} (weights sha256 {checkpoint.weight_hash[:16]})"
    return dict(checkpoint.network.state_dict()), origin


INIT_RECORD = "init.json"


def starting_weights(request: TrainRequest, settings: TrainSettings,
                     ct_mapping: pre_post.IntensityMapping) -> tuple[dict[str, Any] | None, str | None]:
    """``--init``'s weights for a new run, and the origin line for the card. A run that resumes
    keeps its own state (no weights) and the origin recorded when it started (``init.json``),
    whatever ``--init`` names now."""
    record = request.out / INIT_RECORD
    if (request.out / STATE_FILE).is_file():
        return None, json.loads(record.read_text())["origin"] if record.is_file() else None
    if not request.init:
        return None, None
    from ..model import distributed

    weights, origin = initial_weights(request.init, request, settings, ct_mapping)
    if distributed.rank() == 0:
        request.out.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"init": request.init, "origin": origin}) + "\n")
    return weights, origin


def _plain(value: object) -> object:
    """JSON round trip, so that tuples and lists (card vs settings) compare equal."""
    return json.loads(json.dumps(value))


def make_card(request: TrainRequest, settings: TrainSettings, outcome: TrainOutcome, n_cases: int,
              ct_mapping: pre_post.IntensityMapping, origin: str | None = None) -> ModelCard:
    """The model card for a finished run (with the CT mapping the cases were prepared with)."""
    command = request.command if origin is None else f"{request.command} (initialised from {origin})"
    return ModelCard(
        name=request.name or f"ct2mri-{request.arch}-demo",
        version=VERSION,
        architecture=request.arch,
        network=settings.network,
        scheduler=settings.scheduler,
        spacing_mm=(request.spacing_mm,) * 3,
        patch_size=(request.patch,) * 3,
        intensity=ct_mapping.to_card(request.mr_norm),
        description=request.description,
        training_data=_data_summary(request.data, n_cases),
        training_command=command,
        seed=request.seed,
        iterations=outcome.iterations,
        evaluation={"validation_loss": outcome.val_losses[-1][1]} if outcome.val_losses else {},
        training_precision=outcome.precision,
        weights_dtype=request.weights_dtype,
        sampling=settings.sampling,
    )


def run_training(request: TrainRequest, cases: Sequence[PreparedCase] | None = None,
                 on_step: Callable[[int, float], None] | None = None) -> tuple[Path, TrainOutcome]:
    """Train (resuming if ``out`` holds a run state) and save the checkpoint into ``out``.

    Without ``cases`` the data folder is read through the grid cache (:mod:`.grid_cache`): the
    first process of each machine (local rank 0) fills it, the others of a torchrun run wait,
    then every rank reads patches from it. Only rank 0 writes the checkpoint."""
    from ..model import distributed

    validate(request)
    ct_mapping = mapping(request)
    try:
        device = distributed.start(request.device)
        settings = TrainSettings(
            arch=request.arch, network=network(request),
            scheduler=scheduler_config(), iterations=request.iterations, batch_size=request.batch_size,
            patch=request.patch, lr=request.lr, seed=request.seed, val_every=request.val_every,
            sampling=sampling(request), zoom=request.zoom, paste=request.paste,
        )
        init, origin = starting_weights(request, settings, ct_mapping)
        first_here = distributed.local_rank() == 0
        data: Sequence[PreparedCase | grid_cache.CachedCase]
        if cases is None:
            cache = grid_cache.GridCache(request.cache or grid_cache.default_cache_dir(request.out))
            if first_here:
                data = grid_cache.cached_cases(request.data, request.spacing_mm, cache, ct_mapping, request.mr_norm)
            distributed.barrier()
            if not first_here:
                data = grid_cache.cached_cases(request.data, request.spacing_mm, cache, ct_mapping, request.mr_norm)
        else:
            data = cases
        max_seconds = None if request.max_minutes is None else request.max_minutes * 60.0
        outcome = train(data, settings, request.out, on_step, device, max_seconds, request.precision, request.workers,
                        init)
        if outcome.rank != 0:
            return request.out, outcome
        card = make_card(request, settings, outcome, len(data), ct_mapping, origin)
        return save_checkpoint(request.out, card, outcome.network), outcome
    finally:
        distributed.stop()
