"""Helpers for tests across the project: a tiny, seeded, randomly initialised checkpoint.

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

import torch

from .checkpoint import ModelCard, save_checkpoint
from .diffusion import sampling_config, scheduler_config
from .networks import build_network, network_config

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
