"""What a MONAI bundle must tell the node, read from its ``configs/metadata.json`` without torch.

A bundle is a folder (``configs/metadata.json``, ``configs/inference.json``,
``models/model.safetensors`` or ``models/model.pt``). The node builds the bundle's network from
``inference.json`` (:mod:`.bundle`) and runs it in its own pipeline, so it needs from the
metadata what its pre- and post-processing depend on: the model spacing and the CT intensity
mapping (under the ``ct2mri_node`` key, the fields of our model card) and the network's input
and output channels (MONAI's ``network_data_format``). A bundle that lacks one is refused here,
with the missing key named; ``check-config`` runs the same check without loading torch.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InputError
from .pre_post import IntensityMapping

log = logging.getLogger(__name__)

METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
#: Weight files, in the order they are looked for.
WEIGHT_FILES = (Path("models/model.safetensors"), Path("models/model.pt"))
#: The metadata key holding the node's model card (spacing, intensity mapping, sampler, ...).
CARD_KEY = "ct2mri_node"
#: The card's ``architecture`` naming a one-pass regression network (input: the CT channels);
#: the others are diffusion networks called as ``network([x_t, ct], t)``.
REGRESSION = "unet"
DIFFUSION = ("enhanced", "ddpm")
#: The node makes one MR channel.
OUTPUT_CHANNELS = 1


@dataclass(frozen=True)
class BundleMeta:
    """The parts of a bundle the node needs, checked: identity, card, channels and file paths."""

    path: Path
    name: str
    version: str
    #: The ModelCard fields under ``ct2mri_node`` (without name, version and network).
    card: dict[str, Any]
    architecture: str
    in_channels: int
    out_channels: int
    ct_channels: int
    inference: Path
    weights: Path


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    """``data[a][b]...`` for ``"a.b..."``; KeyError naming the first missing part's full path."""
    node: Any = data
    walked: list[str] = []
    for part in dotted.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise KeyError(".".join(walked))
        node = node[part]
    return node


def _channel_entry(section: Any, preferred: str, where: str) -> str:
    """The key of the one input (or output) the node uses: ``preferred`` or the only entry."""
    if isinstance(section, dict):
        if preferred in section:
            return f"{where}.{preferred}"
        if len(section) == 1:
            return f"{where}.{next(iter(section))}"
    return f"{where}.{preferred}"


def read_bundle_meta(bundle: str | os.PathLike[str]) -> BundleMeta:
    """Read and check a bundle's metadata and files; CheckpointError naming what is missing."""
    root = Path(bundle)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a MONAI bundle folder (it does not exist or is not a folder)")
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise CheckpointError(f"{root}: no {METADATA}; a MONAI bundle holds {METADATA}, {INFERENCE} and "
                              f"{WEIGHT_FILES[0]} or {WEIGHT_FILES[1]}")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: cannot read the bundle metadata ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{meta_path}: the bundle metadata must be a JSON object")
    inference = root / INFERENCE
    if not inference.is_file():
        raise CheckpointError(f"{root}: no {INFERENCE}; the node builds the bundle's network from it")
    weights = next((root / w for w in WEIGHT_FILES if (root / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{root}: no weights ({WEIGHT_FILES[0]} or {WEIGHT_FILES[1]})")

    data_format = data.get("network_data_format")
    data_format = data_format if isinstance(data_format, dict) else {}
    inputs = _channel_entry(data_format.get("inputs"), "image", "network_data_format.inputs")
    outputs = _channel_entry(data_format.get("outputs"), "pred", "network_data_format.outputs")
    required = ("name", "version", f"{CARD_KEY}.spacing_mm", f"{CARD_KEY}.intensity.ct",
                f"{inputs}.num_channels", f"{outputs}.num_channels")
    missing = []
    for key in required:
        try:
            _lookup(data, key)
        except KeyError:
            missing.append(key)
    if missing:
        raise CheckpointError(f"{meta_path}: the bundle lacks {', '.join(missing)}, which the node needs "
                              "(see docs/training.md, 'Export and deployment as a MONAI bundle')")

    card = dict(data[CARD_KEY])
    spacing = card["spacing_mm"]
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(s, (int, float)) and s > 0 for s in spacing)):
        raise CheckpointError(f"{meta_path}: {CARD_KEY}.spacing_mm must be three positive numbers (mm), got {spacing!r}")
    try:
        mapping = IntensityMapping.from_card(card["intensity"])
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: {CARD_KEY}.intensity.ct is not a CT mapping ({exc})") from exc
    architecture = str(card.get("architecture", REGRESSION))
    if architecture not in (REGRESSION, *DIFFUSION):
        raise CheckpointError(f"{meta_path}: {CARD_KEY}.architecture {architecture!r} is not one of "
                              f"{REGRESSION} (one-pass regression), {', '.join(DIFFUSION)} (diffusion)")
    channels = {}
    for key in (f"{inputs}.num_channels", f"{outputs}.num_channels"):
        value = _lookup(data, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{meta_path}: {key} must be a positive integer, got {value!r}")
        channels[key] = value
    in_channels, out_channels = channels[f"{inputs}.num_channels"], channels[f"{outputs}.num_channels"]
    expected = mapping.channels + (0 if architecture == REGRESSION else 1)
    if in_channels != expected:
        what = "the CT windows" if architecture == REGRESSION else "the CT windows plus the noisy MR"
        raise CheckpointError(f"{meta_path}: {inputs}.num_channels is {in_channels}, but {CARD_KEY}.intensity.ct "
                              f"makes {mapping.channels} CT channel(s) and a {architecture} network takes "
                              f"{what} ({expected})")
    if out_channels != OUTPUT_CHANNELS:
        raise CheckpointError(f"{meta_path}: {outputs}.num_channels is {out_channels}; the node needs a network "
                              f"with {OUTPUT_CHANNELS} output channel (the synthetic MR)")
    name, version = data["name"], data["version"]
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise CheckpointError(f"{meta_path}: name and version must be non-empty strings")
    card["architecture"] = architecture
    return BundleMeta(root, name, version, card, architecture, in_channels, out_channels,
                      mapping.channels, inference, weights)
