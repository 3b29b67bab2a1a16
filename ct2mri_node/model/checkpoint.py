"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``card.json`` (everything
needed to rebuild and describe the model). ``"bundled"`` names the package's own checkpoint in
``ct2mri_node/model/bundled/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from .diffusion import DEFAULT_SAMPLING, METHODS, scheduler_config
from .networks import ARCHITECTURES, build_network
from .pre_post import IntensityMapping

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CARD = "card.json"
BUNDLED_DIR = Path(__file__).parent / "bundled"
CARD_VERSION = 1


@dataclass
class ModelCard:
    """What ``card.json`` holds: the model's identity, how to rebuild it and how it was made."""

    name: str
    version: str
    architecture: str
    network: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=scheduler_config)
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    patch_size: tuple[int, int, int] = (32, 32, 32)
    intensity: dict[str, Any] = field(default_factory=lambda: IntensityMapping().to_card())
    description: str = ""
    training_data: str = ""
    training_command: str = ""
    seed: int = 0
    iterations: int = 0
    evaluation: dict[str, Any] = field(default_factory=dict)
    #: The uncertainty map's conformal calibration (``benchmarks/uncertainty_calibration.py
    #: calibrate --write-card``; :class:`.uncertainty.UncertaintyCalibration`); empty: not calibrated.
    uncertainty: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLING))
    card_version: int = CARD_VERSION
    #: Numerical precision of the training run's forward passes: "fp32", "bf16" or "fp16".
    training_precision: str = "fp32"
    #: How the weights are stored: "float32", or "float16" (half the file; loaded into float32).
    weights_dtype: str = "float32"

    @property
    def prediction_type(self) -> str:
        """"v_prediction", "epsilon", "sample", or "regression" for the unet."""
        return "regression" if self.architecture == "unet" else str(self.scheduler["prediction_type"])

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["prediction_type"] = self.prediction_type
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> ModelCard:
        """Parse a card, raising CheckpointError naming what is missing or wrong."""
        data = {k: v for k, v in data.items() if k != "prediction_type"}
        required = ("name", "version", "architecture", "network")
        missing = [k for k in required if k not in data]
        if missing:
            raise CheckpointError(f"{source}: card.json lacks {', '.join(missing)}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"{source}: card.json has unknown keys {sorted(unknown)}")
        if data["architecture"] not in ARCHITECTURES:
            raise CheckpointError(f"{source}: unknown architecture {data['architecture']!r}")
        card = cls(**data)
        card.spacing_mm = tuple(float(s) for s in card.spacing_mm)  # type: ignore[assignment]
        card.patch_size = tuple(int(p) for p in card.patch_size)  # type: ignore[assignment]
        if len(card.spacing_mm) != 3 or min(card.spacing_mm) <= 0 or len(card.patch_size) != 3:
            raise CheckpointError(f"{source}: spacing_mm and patch_size need three positive values")
        if not isinstance(card.sampling, dict) or card.sampling.get("method", "noise") not in METHODS:
            raise CheckpointError(f"{source}: sampling.method must be one of {', '.join(METHODS)}")
        return card


@dataclass
class Checkpoint:
    """A loaded checkpoint: its card, the network with weights, and the weights' sha256.

    ``source`` says where it came from: "checkpoint" (our format) or "bundle" (a MONAI bundle,
    :mod:`.bundle`)."""

    card: ModelCard
    network: nn.Module
    weight_hash: str
    path: Path
    source: str = "checkpoint"


def resolve(checkpoint: str | os.PathLike[str]) -> Path:
    """The checkpoint directory for ``"bundled"`` or a path."""
    return BUNDLED_DIR if str(checkpoint) == "bundled" else Path(checkpoint)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(directory: str | os.PathLike[str], card: ModelCard, network: nn.Module) -> Path:
    """Write weights and card into ``directory`` (created); files replaced atomically."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    store = {"float32": torch.float32, "float16": torch.float16}.get(card.weights_dtype)
    if store is None:
        raise CheckpointError(f"weights_dtype must be float32 or float16, got {card.weights_dtype!r}")
    state = {k: (v.detach().cpu().to(store) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in network.state_dict().items()}
    tmp_w = out / (WEIGHTS + ".tmp")
    # One metadata key only: safetensors writes a metadata map in hash order, so two keys would
    # make the file's bytes (and so the weight hash) differ between runs for the same weights.
    save_file(state, str(tmp_w), metadata={"model": f"{card.name} ({card.architecture})"})
    os.chmod(tmp_w, 0o644)
    os.replace(tmp_w, out / WEIGHTS)
    write_card(out, card)
    log.info("saved checkpoint %s (%s)", out, card.architecture)
    return out


def write_card(directory: Path, card: ModelCard) -> Path:
    """Replace ``directory``'s ``card.json`` with ``card`` atomically (training, evaluation and
    calibration records all go through here)."""
    tmp = directory / (CARD + ".tmp")
    tmp.write_text(json.dumps(card.to_json(), indent=2) + "\n")
    os.replace(tmp, directory / CARD)
    return directory / CARD


def read_card(directory: Path) -> ModelCard:
    """Read and validate ``card.json``."""
    path = directory / CARD
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CARD}; a checkpoint directory holds {WEIGHTS} and {CARD}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the model card ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the model card must be a JSON object")
    return ModelCard.from_json(data, str(directory))


def load_checkpoint(checkpoint: str | os.PathLike[str] = "bundled") -> Checkpoint:
    """Load ``"bundled"`` or a checkpoint directory; CheckpointError for missing/corrupt/mismatched."""
    directory = resolve(checkpoint)
    if not (directory / WEIGHTS).is_file():
        if str(checkpoint) == "bundled":
            raise CheckpointError(
                f"the bundled model is not installed ({directory / WEIGHTS} is missing); "
                "train one with `ct2mri-node train` and pass --checkpoint DIR"
            )
        raise CheckpointError(f"{directory}: no {WEIGHTS}; is this a ct2mri-node checkpoint directory?")
    card = read_card(directory)
    network = build_network(card.architecture, card.network)
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS}: corrupt weights file ({exc})") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CheckpointError(
            f"{directory}: weights do not match the {card.architecture} network described by card.json ({first})"
        ) from exc
    network.eval()
    return Checkpoint(card, network, file_sha256(directory / WEIGHTS), directory)


def state_dict_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True if two state dicts hold the same keys and identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
