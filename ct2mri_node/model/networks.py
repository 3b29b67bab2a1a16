"""The three networks, selectable by name: "enhanced", "ddpm" and "unet".

All three share one encoder/decoder skeleton (``levels`` resolution levels, channel width
``base_channels * mults[i]``, skip connections) and differ only in their blocks:

- ``enhanced``: transform blocks everywhere, memory block at the bottleneck (and optionally at
  the lowest decoder level), timestep embedding; input concat(noisy MR, CT channels), output v.
- ``ddpm``: plain residual blocks, timestep embedding; same input/output.
- ``unet``: plain residual blocks, no timestep; input the CT channels, output MR in one pass (L1 regression).

``ct_channels`` is the number of CT windows the input carries (1 in v0.2 models) and ``norm`` the
feature normalisation (``batch`` for new models, ``group`` in v0.2 models; see :func:`blocks.norm`).

The config dict is stored with the weights (card.json), so a checkpoint rebuilds its network.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .blocks import NORMS, MemoryBlock, ResBlock, TimeEmbedding, TransformBlock, norm

log = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("enhanced", "ddpm", "unet")

#: The demo config: small enough for 2 CPU cores (see benchmarks/translate_cpu.py).
DEFAULT_CONFIG: dict[str, Any] = {
    "base_channels": 16,
    "levels": 3,
    "blocks_per_level": 1,
    "memory_grid": 4,
    "memory_in_decoder": True,
    "ct_channels": 4,
    "norm": "batch",
}
#: What a stored config that predates a key meant by leaving it out (v0.2 cards).
LEGACY_DEFAULTS: dict[str, Any] = {"ct_channels": 1, "norm": "group"}

BlockFactory = Callable[[int, int, int | None], nn.Module]


def network_config(arch: str, **overrides: Any) -> dict[str, Any]:
    """The full config for ``arch``: defaults, overrides, and the channel counts it implies."""
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    config = {**DEFAULT_CONFIG, **overrides}
    if config["norm"] not in NORMS:
        raise CheckpointError(f"unknown normalisation {config['norm']!r}; choose one of {', '.join(NORMS)}")
    ct_channels = int(config["ct_channels"])
    config["in_channels"] = ct_channels if arch == "unet" else ct_channels + 1
    config["out_channels"] = 1
    return config


def level_channels(config: dict[str, Any]) -> list[int]:
    """Channel width per resolution level: base, 2*base, 4*base, ..."""
    return [int(config["base_channels"]) * 2**i for i in range(int(config["levels"]))]


def patch_multiple(config: dict[str, Any]) -> int:
    """Patch sides must be multiples of this (one extra factor 2 for the coarse path)."""
    return 2 ** int(config["levels"])


class Upsample(nn.Module):
    """Trilinear x2 upsampling followed by a 3x3x3 conv (no checkerboard artefacts)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="trilinear", align_corners=False))


class EncoderDecoder(nn.Module):
    """3D UNet skeleton; ``block`` builds each (cin, cout, emb_dim) block."""

    def __init__(self, config: dict[str, Any], block: BlockFactory, timed: bool, memory: bool) -> None:
        super().__init__()
        chans = level_channels(config)
        reps = int(config.get("blocks_per_level", 1))
        emb_dim = chans[0] * 4 if timed else None
        self.time = TimeEmbedding(chans[0], emb_dim) if emb_dim else None
        self.stem = nn.Conv3d(int(config["in_channels"]), chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        cprev = chans[0]
        for i, c in enumerate(chans):
            self.down_blocks.append(nn.ModuleList([block(cprev if r == 0 else c, c, emb_dim) for r in range(reps)]))
            cprev = c
            if i < len(chans) - 1:
                self.downs.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
        grid = int(config.get("memory_grid", 4))
        kind = str(config["norm"])
        self.mid1 = block(chans[-1], chans[-1], emb_dim)
        self.mid_memory = MemoryBlock(chans[-1], grid, emb_dim, kind) if memory else None
        self.mid2 = block(chans[-1], chans[-1], emb_dim)
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(chans))):
            c = chans[i]
            cin = chans[min(i + 1, len(chans) - 1)]
            if i < len(chans) - 1:
                self.ups.append(Upsample(cin))
            self.up_blocks.append(nn.ModuleList([block(cin + c if r == 0 else c, c, emb_dim) for r in range(reps)]))
        dec_memory = memory and bool(config.get("memory_in_decoder", False))
        self.dec_memory = MemoryBlock(chans[-1], grid, emb_dim, kind) if dec_memory else None
        self.head = nn.Sequential(norm(chans[0], kind), nn.SiLU(), nn.Conv3d(chans[0], int(config["out_channels"]), 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        emb = None
        if self.time is not None:
            if t is None:
                raise ValueError("this network needs the timestep t")
            emb = self.time(t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t)
        h = self.stem(x)
        skips: list[torch.Tensor] = []
        for i, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        h = self.mid1(h, emb)
        if self.mid_memory is not None:
            h = self.mid_memory(h, emb)
        h = self.mid2(h, emb)
        for j, blocks in enumerate(self.up_blocks):
            skip = skips.pop()
            if j > 0:
                h = self.ups[j - 1](h, skip.shape[2:])
            h = torch.cat([h, skip], dim=1)
            for blk in blocks:
                h = blk(h, emb)
            if j == 0 and self.dec_memory is not None:
                h = self.dec_memory(h, emb)
        return self.head(h)


def build_network(arch: str, config: dict[str, Any]) -> nn.Module:
    """Build the network ``arch`` ("enhanced" | "ddpm" | "unet") from its stored config."""
    stored = {**LEGACY_DEFAULTS, **config}
    full = network_config(arch, **{k: v for k, v in stored.items() if k not in ("in_channels", "out_channels")})
    if int(full["levels"]) < 1 or int(full["base_channels"]) < 1 or int(full["ct_channels"]) < 1:
        raise CheckpointError(f"invalid network config {config}: levels, base_channels and ct_channels must be >= 1")
    kind = str(full["norm"])
    if arch == "enhanced":
        return EncoderDecoder(full, functools.partial(TransformBlock, norm_kind=kind), timed=True, memory=True)
    return EncoderDecoder(full, functools.partial(ResBlock, norm_kind=kind), timed=arch == "ddpm", memory=False)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def matched_base_channels(arch: str, reference: dict[str, Any], reference_arch: str = "enhanced") -> int:
    """The ``base_channels`` for ``arch`` whose parameter count is closest to the reference's.

    Used so that the baselines are compared with the enhanced model at a similar size.
    """
    target = parameter_count(build_network(reference_arch, reference))
    best, best_gap = 1, float("inf")
    base0 = int(reference["base_channels"])
    for base in range(max(1, base0 // 2), base0 * 2 + 1):
        count = parameter_count(build_network(arch, {**reference, "base_channels": base}))
        gap = abs(count - target) / target
        if gap < best_gap:
            best, best_gap = base, gap
    return best
