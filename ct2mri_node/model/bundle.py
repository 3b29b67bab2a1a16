"""MONAI bundles: export a checkpoint as one, and load one to run in the node's pipeline.

The network is built by ``monai.bundle.ConfigParser`` from the bundle's own
``configs/inference.json`` (its ``network_def``), so a department can bring a network trained
elsewhere; the node keeps its own assembly, sliding window, post-processing and encoding, set
up from the card in ``configs/metadata.json`` (:mod:`.bundle_meta`). Building the network runs
the bundle's config (``_target_`` and ``$`` expressions are Python): load only bundles you trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.bundle import ConfigParser
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .. import __version__
from ..errors import CheckpointError
from .bundle_meta import CARD_KEY, INFERENCE, METADATA, REGRESSION, WEIGHT_FILES, read_bundle_meta
from .checkpoint import WEIGHTS, Checkpoint, ModelCard, file_sha256, load_checkpoint

log = logging.getLogger(__name__)

#: The inference.json key naming the network (MONAI's convention), and the fallback.
NETWORK_KEYS = ("network_def", "network")
INTENDED_USE = ("Research and treatment-planning workflows that need an MR-like view of a CT. The output is a "
                "SYNTHETIC image computed from CT, not an acquired MR: NOT FOR DIAGNOSIS.")


class BundleNetwork(nn.Module):
    """A bundle's network behind the node's calling convention ``network(x, t)``: a regression
    network is called with ``x`` alone (as MONAI's nets take it), a diffusion network with both."""

    def __init__(self, net: nn.Module, timed: bool) -> None:
        super().__init__()
        self.net = net
        self.timed = timed

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t) if self.timed else self.net(x)


def _build(meta_path: Path, inference: Path) -> nn.Module:
    """The network of ``inference.json`` (``network_def``, else ``network``), via ConfigParser."""
    parser = ConfigParser()
    try:
        parser.read_meta(str(meta_path))
        parser.read_config(str(inference))
        key = next((k for k in NETWORK_KEYS if parser.get(k) is not None), None)
        if key is None:
            raise CheckpointError(f"{inference}: defines no {' or '.join(NETWORK_KEYS)}")
        network = parser.get_parsed_content(key, instantiate=True)
    except CheckpointError:
        raise
    except Exception as exc:  # the bundle's config can raise anything; name it
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{inference}: cannot build the network ({type(exc).__name__}: {first})") from exc
    if not isinstance(network, nn.Module):
        raise CheckpointError(f"{inference}: {key} is a {type(network).__name__}, not a torch network")
    return network


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``models/model.safetensors`` or ``models/model.pt`` (tensors only)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt weights file ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def load_bundle(bundle: str | os.PathLike[str]) -> Checkpoint:
    """Load a MONAI bundle as a :class:`Checkpoint` (``source`` "bundle"); CheckpointError naming
    what is missing or does not match (metadata keys, network, weights, channels)."""
    meta = read_bundle_meta(bundle)
    network_card = {"bundle": str(meta.path), "in_channels": meta.in_channels,
                    "out_channels": meta.out_channels, "ct_channels": meta.ct_channels}
    card = ModelCard.from_json({**meta.card, "name": meta.name, "version": meta.version,
                                "network": network_card}, str(meta.path / METADATA))
    net = _build(meta.path / METADATA, meta.inference)
    try:
        net.load_state_dict(_weights(meta.weights), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CheckpointError(f"{meta.weights}: the weights do not match the network of {INFERENCE} ({first})") from exc
    network = BundleNetwork(net, timed=meta.architecture != REGRESSION).eval()
    _probe(network, card, meta.path)
    log.info("loaded MONAI bundle %s %s (%s network %s)", meta.name, meta.version, meta.architecture,
             type(net).__name__)
    return Checkpoint(card, network, file_sha256(meta.weights), meta.path, source="bundle")


def _probe(network: BundleNetwork, card: ModelCard, where: Path) -> None:
    """One forward pass on a zero patch: the declared input channels must be accepted and one
    output channel of the patch's shape come back (else the job would fail on every series)."""
    channels = int(card.network["in_channels"])
    patch = torch.zeros((1, channels, *card.patch_size))
    t = None if not network.timed else torch.zeros(1, dtype=torch.long)
    try:
        with torch.no_grad():
            out = network(patch, t)
    except Exception as exc:  # any failure here is a bundle that cannot run
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{where}: the network does not run on a {channels}-channel patch of "
                              f"{list(card.patch_size)} voxels ({first}); check network_data_format and "
                              f"{CARD_KEY}.patch_size") from exc
    expected = (1, int(card.network["out_channels"]), *card.patch_size)
    if tuple(out.shape) != expected:
        raise CheckpointError(f"{where}: the network returns shape {list(out.shape)} for a patch of "
                              f"{list(patch.shape)}; the node needs {list(expected)}")


def bundle_metadata(card: ModelCard) -> dict[str, Any]:
    """``configs/metadata.json`` for ``card``: MONAI's keys plus the node's card under ``ct2mri_node``."""
    in_channels = int(card.network["in_channels"])
    ct_channels = int(card.network.get("ct_channels", 1))
    inputs: dict[str, Any] = {
        "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": in_channels,
        "spatial_shape": list(card.patch_size), "dtype": "float32", "value_range": [-1, 1],
        "is_patch_data": True,
        "channel_def": {str(i): f"CT window {i + 1} (ct2mri_node.intensity.ct.windows)" for i in range(ct_channels)},
    }
    if card.architecture != REGRESSION:
        inputs["channel_def"] = {"0": "noisy MR x_t", **{str(i + 1): v for i, v in enumerate(inputs["channel_def"].values())}}
    node_card = {k: v for k, v in card.to_json().items() if k not in ("name", "version", "network")}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": card.version,
        "changelog": {card.version: f"exported from a ct2mri-node checkpoint by ct2mri-node {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"ct2mri-node": __version__},
        "name": card.name,
        "task": "CT to synthetic MR translation (3D, sliding window)",
        "description": f"SYNTHETIC, NOT FOR DIAGNOSIS. {card.description or card.architecture + ' CT-to-MR model'}",
        "authors": "ct2mri-node",
        "copyright": "see the project's LICENSE",
        "intended_use": INTENDED_USE,
        "data_source": card.training_data,
        "network_data_format": {
            "inputs": {"image": inputs},
            "outputs": {"pred": {
                "type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                "spatial_shape": list(card.patch_size), "dtype": "float32", "value_range": [-1, 1],
                "is_patch_data": True,
                "channel_def": {"0": "synthetic MR (regression)" if card.architecture == REGRESSION
                                else f"{card.prediction_type} of the synthetic MR (diffusion)"},
            }},
        },
        CARD_KEY: node_card,
    }


def bundle_inference(card: ModelCard) -> dict[str, Any]:
    """``configs/inference.json``: the network, built by our ``build_network`` from the card's
    config, and a sliding-window inferer that documents the patch size the node uses."""
    return {
        "imports": ["$import ct2mri_node.model.networks"],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "ct2mri_node.model.networks.build_network",
                        "arch": card.architecture, "config": card.network},
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(card.patch_size),
                    "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"},
    }


def export_bundle(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the checkpoint as a MONAI bundle in ``out`` (a new or empty folder); the weights are
    copied byte for byte to ``models/model.safetensors`` (same sha256), and the bundle is loaded
    back before this returns, so a bundle that would not load is never left behind."""
    ckpt = load_checkpoint(checkpoint)
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CheckpointError(f"{root}: exists and is not an empty folder; choose a new --out")
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / METADATA.parent).mkdir(parents=True)
    (tmp / WEIGHT_FILES[0].parent).mkdir(parents=True)
    (tmp / METADATA).write_text(json.dumps(bundle_metadata(ckpt.card), indent=2) + "\n", encoding="utf-8")
    (tmp / INFERENCE).write_text(json.dumps(bundle_inference(ckpt.card), indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(ckpt.path / WEIGHTS, tmp / WEIGHT_FILES[0])
    loaded = load_bundle(tmp)
    if loaded.weight_hash != ckpt.weight_hash:   # pragma: no cover - a copy that changed on disk
        raise CheckpointError(f"{tmp}: the copied weights differ from {ckpt.path / WEIGHTS}")
    if root.exists():
        root.rmdir()
    os.replace(tmp, root)
    log.info("exported %s %s to the MONAI bundle %s", ckpt.card.name, ckpt.card.version, root)
    return root
