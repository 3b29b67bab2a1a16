"""Training orchestration: SynthRAD-layout folder -> prepared cases -> trainer -> checkpoint.

Every case is resampled once to the model spacing (index space, as at inference), the CT is
mapped HU -> [-1, 1] with the card's mapping and the MR is normalised per case: its 1st/99th
percentiles inside the body mask map to -1/1 (clipped). ``run_training`` writes the run state
(``last.pt``, resumable) and, at the end, the checkpoint (``model.safetensors`` + ``card.json``)
into the output directory.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..model import pre_post
from ..model.checkpoint import ModelCard, save_checkpoint
from ..model.diffusion import scheduler_config, sampling_config
from ..model.networks import ARCHITECTURES, matched_base_channels, network_config, patch_multiple
from ..model.trainer import PreparedCase, TrainOutcome, TrainSettings, train
from . import pairs

log = logging.getLogger(__name__)

VERSION = "0.2.0"
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
    name: str | None = None
    description: str = DEMO_DESCRIPTION
    command: str = field(default_factory=lambda: shlex.join(["ct2mri-node", *sys.argv[1:]]))


def validate(request: TrainRequest) -> None:
    """Raise ConfigError for options that cannot make a training run."""
    if request.arch not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {request.arch!r}")
    multiple = patch_multiple(network_config(request.arch))
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


def sampling(request: TrainRequest) -> dict[str, object]:
    """The card's sampling section: estimate-then-refine for the enhanced model, from noise for the plain DDPM."""
    if request.arch == "unet":
        return sampling_config("noise", default_steps=1)
    method = request.method or ("refine" if request.arch == "enhanced" else "noise")
    return sampling_config(method, t0=request.t0) if method == "refine" else sampling_config(method)


def base_channels(request: TrainRequest) -> int:
    """Width of ``arch``: ``--base-channels`` for "enhanced"; baselines widened to match its size.

    So that the comparison is at a similar parameter count, ``--base-channels`` always names the
    width of the enhanced reference, and "ddpm"/"unet" get the width closest to its parameter count.
    """
    if request.arch == "enhanced":
        return request.base_channels
    return matched_base_channels(request.arch, network_config("enhanced", base_channels=request.base_channels))


def prepare_case(case: pairs.PairedCase, spacing_mm: float, mapping: pre_post.IntensityMapping) -> PreparedCase:
    """Resample a paired case to the model spacing and normalise CT and MR to [-1, 1]."""
    target = (spacing_mm,) * 3
    grid = pre_post.model_shape(case.ct.shape, case.spacing, target)
    ct, mask = pre_post.to_model_grid(case.ct, case.mask, grid, mapping)
    mr = pre_post.resample(case.mr, grid)
    mr = pre_post.normalise_global(mr, mask) * 2.0 - 1.0
    return PreparedCase(case.name, ct, mr.astype(np.float32), mask)


def load_prepared(data: Path, spacing_mm: float, mapping: pre_post.IntensityMapping) -> list[PreparedCase]:
    """Every case of a SynthRAD-layout folder, prepared for training."""
    prepared = []
    for case_dir in pairs.list_cases(data):
        prepared.append(prepare_case(pairs.load_case(case_dir), spacing_mm, mapping))
        log.debug("prepared case %s: %s", case_dir.name, prepared[-1].ct.shape)
    return prepared


def describe_data(data: Path) -> str:
    """"N paired CT/MR cases from DIR (family: count, ...)", from each case's phantom.json."""
    counts: dict[str, int] = {}
    cases = pairs.list_cases(data)
    for case_dir in cases:
        family = "unlabelled (SynthRAD layout)"
        info = case_dir / "phantom.json"
        if info.is_file():
            try:
                family = str(json.loads(info.read_text()).get("family", "phantom"))
            except (OSError, ValueError):
                pass
        counts[family] = counts.get(family, 0) + 1
    parts = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    return f"{len(cases)} paired CT/MR cases from {data.name} ({parts}); synthetic data, no patient data"


def _data_summary(data: Path, n_cases: int) -> str:
    try:
        return describe_data(data)
    except DataError:  # cases given in memory (tests), not from the folder
        return f"{n_cases} paired CT/MR cases"


def make_card(request: TrainRequest, settings: TrainSettings, outcome: TrainOutcome, n_cases: int,
              mapping: pre_post.IntensityMapping) -> ModelCard:
    """The model card for a finished run (with the CT mapping the cases were prepared with)."""
    return ModelCard(
        name=request.name or f"ct2mri-{request.arch}-demo",
        version=VERSION,
        architecture=request.arch,
        network=settings.network,
        scheduler=settings.scheduler,
        spacing_mm=(request.spacing_mm,) * 3,
        patch_size=(request.patch,) * 3,
        intensity=mapping.to_card(),
        description=request.description,
        training_data=_data_summary(request.data, n_cases),
        training_command=request.command,
        seed=request.seed,
        iterations=outcome.iterations,
        evaluation={"validation_loss": outcome.val_losses[-1][1]} if outcome.val_losses else {},
        sampling=settings.sampling,
    )


def run_training(request: TrainRequest, cases: Sequence[PreparedCase] | None = None,
                 on_step: Callable[[int, float], None] | None = None) -> tuple[Path, TrainOutcome]:
    """Train (resuming if ``out`` holds a run state) and save the checkpoint into ``out``."""
    validate(request)
    mapping = pre_post.IntensityMapping()
    if cases is None:
        cases = load_prepared(request.data, request.spacing_mm, mapping)
    settings = TrainSettings(
        arch=request.arch, network=network_config(request.arch, base_channels=base_channels(request)),
        scheduler=scheduler_config(), iterations=request.iterations, batch_size=request.batch_size,
        patch=request.patch, lr=request.lr, seed=request.seed, val_every=request.val_every,
        sampling=sampling(request),
    )
    outcome = train(cases, settings, request.out, on_step)
    card = make_card(request, settings, outcome, len(cases), mapping)
    return save_checkpoint(request.out, card, outcome.network), outcome
