"""Helpers for tests across the project: a tiny, seeded, randomly initialised checkpoint, and
tiny prepared training cases.

``make_tiny_checkpoint(tmp_path)`` writes in well under a second a checkpoint whose
Translator runs a 20x40x40 CT in about a second on the CPU (base 4 channels, 2 levels,
patch 16^3, model spacing 4 mm). Its output is meaningless but deterministic and has the
right type, shape and range, which is what tests of the CLI, pipeline and node need.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import ModelCard, save_checkpoint
from .diffusion import sampling_config, scheduler_config
from .networks import build_network, network_config
from .pre_post import IntensityMapping
from .trainer import PreparedCase

log = logging.getLogger(__name__)

TINY_NETWORK = {"base_channels": 4, "levels": 2, "blocks_per_level": 1, "memory_grid": 2, "memory_in_decoder": False}


def tiny_card(arch: str = "enhanced", seed: int = 0) -> ModelCard:
    """The card of the tiny test model for ``arch``."""
    return ModelCard(
        name=f"ct2mri-{arch}-tiny-test",
        version="0.0.0",
        architecture=arch,
        network=network_config(arch, **TINY_NETWORK),
        scheduler=scheduler_config(),
        spacing_mm=(4.0, 4.0, 4.0),
        patch_size=(16, 16, 16),
        description="tiny randomly initialised model for tests; its output is meaningless",
        training_data="none (random initialisation)",
        training_command="ct2mri_node.model.testing.make_tiny_checkpoint",
        seed=seed,
        sampling=sampling_config("refine") if arch == "enhanced" else sampling_config("noise"),
    )


def make_tiny_checkpoint(directory: str | os.PathLike[str], arch: str = "enhanced", seed: int = 0, *,
                         network: dict[str, Any] | None = None,
                         spacing_mm: tuple[float, float, float] | None = None,
                         patch_size: tuple[int, int, int] | None = None) -> Path:
    """Write a tiny seeded random checkpoint of ``arch`` into ``directory``; return the directory.

    ``network``, ``spacing_mm`` and ``patch_size`` replace the tiny card's, e.g. for a benchmark
    that times a full-size design with random weights.
    """
    card = tiny_card(arch, seed)
    overrides = {"network": network, "spacing_mm": spacing_mm, "patch_size": patch_size}
    card = dataclasses.replace(card, **{k: v for k, v in overrides.items() if v is not None})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(arch, card.network)
    return save_checkpoint(directory, card, network)


#: A foreign network for bundle tests: MONAI's own UNet, known to the bundle's config only.
FOREIGN_UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 1,
                "channels": [4, 8], "strides": [2], "num_res_units": 0}
#: Its CT mapping: two windows (not the node's default four), so the card must be honoured.
FOREIGN_WINDOWS = ((40.0, 400.0), (500.0, 3000.0))


def make_foreign_bundle(directory: str | os.PathLike[str], seed: int = 0, weights: str = "pt") -> Path:
    """Write a MONAI bundle whose network exists only in its ``configs/inference.json`` (MONAI's
    ``UNet``, regression, 2 CT windows, 4 mm, patch 16^3) with seeded random weights in
    ``models/model.pt`` (``weights="pt"``) or ``models/model.safetensors``; return the folder.

    It stands for a network trained elsewhere: nothing of ours builds it."""
    import json

    from monai.bundle import ConfigParser
    from safetensors.torch import save_file

    from .pre_post import IntensityMapping

    root = Path(directory)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    inference = {"network_def": dict(FOREIGN_UNET), "network": "$@network_def"}
    metadata = {
        "version": "1.2.0",
        "name": "foreign-unet-test",
        "description": "SYNTHETIC, NOT FOR DIAGNOSIS. A MONAI UNet with random weights, for tests",
        "intended_use": "tests only; synthetic, not for diagnosis",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": FOREIGN_UNET["in_channels"]}},
            "outputs": {"pred": {"type": "image", "num_channels": FOREIGN_UNET["out_channels"]}},
        },
        "ct2mri_node": {"architecture": "unet", "spacing_mm": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16],
                        "intensity": IntensityMapping(FOREIGN_WINDOWS).to_card()},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2), encoding="utf-8")
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = ConfigParser(inference).get_parsed_content("network_def")
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    if weights == "pt":
        torch.save(state, root / "models" / "model.pt")
    else:
        save_file(state, str(root / "models" / "model.safetensors"))
    return root


def tiny_prepared_cases(count: int = 2, noise: float = 0.05, insert_hu_step: float | None = None) -> list[PreparedCase]:
    """``count`` seeded 12x20x20 training cases: a 40 HU block in air, its MR 0.5 in the body and
    -1 outside plus Gaussian ``noise``; with ``insert_hu_step`` case i also holds a small insert of
    ``i * insert_hu_step`` HU (so the cases differ)."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(count):
        hu = np.full((12, 20, 20), -1000.0, np.float32)
        hu[2:10, 4:16, 4:16] = 40.0
        if insert_hu_step is not None:
            hu[4:8, 6:12, 6:12] = insert_hu_step * i
        mr = np.where(hu > -500, 0.5, -1.0).astype(np.float32) + rng.normal(0, noise, hu.shape).astype(np.float32)
        cases.append(PreparedCase(f"case{i}", IntensityMapping().encode(hu), mr, hu > -500))
    return cases
