"""Network building blocks: timestep embedding, residual block, transform block, memory block.

The transform and memory blocks follow the design described for the "enhanced DDPM" of
Ma, Chen & Liang (Sci Rep 2026): a two-path transform block (fine local detail beside a
coarse wide-context path) and a self-attention-less memory block that links distant regions
through a small pooled grid, so its memory grows linearly with the number of voxels.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def group_count(channels: int) -> int:
    """Groups for GroupNorm: 8 where the width allows, else the largest divisor <= 8."""
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


NORMS: tuple[str, ...] = ("batch", "group")


def norm(channels: int, kind: str = "group") -> nn.Module:
    """The feature normalisation of every block: ``batch`` or ``group``.

    ``batch`` (BatchNorm, running statistics at inference) is the default of new models: its
    statistics are fixed once trained, so every patch of a volume is normalised alike, the
    absolute level of the CT survives, and sliding-window patches agree (no tiles; Buglakova et
    al., ICCV 2025). ``group`` (GroupNorm, statistics of each patch) is what v0.2 models used:
    it removes each patch's own mean and scale, so a uniform patch of fat, fluid or muscle looks
    the same to the next layer.
    """
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown normalisation {kind!r}; choose one of {', '.join(NORMS)}")


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal timestep embedding (Transformer / DDPM style), ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the timestep followed by a small MLP."""

    def __init__(self, base: int, dim: int) -> None:
        super().__init__()
        self.base = base
        self.mlp = nn.Sequential(nn.Linear(base, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.base))


class ScaleShift(nn.Module):
    """Projects the time embedding to a per-channel (scale, shift) pair: FiLM conditioning."""

    def __init__(self, emb_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * channels))

    def forward(self, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        if emb is None:
            return h
        scale, shift = self.proj(emb)[:, :, None, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift


class ResBlock(nn.Module):
    """Plain residual block (two 3x3x3 convs, optional timestep scale/shift): the DDPM baseline."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None, norm_kind: str = "group") -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(cin, norm_kind), nn.Conv3d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout, norm_kind), nn.Conv3d(cout, cout, 3, padding=1)
        self.film = ScaleShift(emb_dim, cout) if emb_dim else None
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            h = self.film(h, emb)
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class TransformBlock(nn.Module):
    """Two-path block: a fine local 3x3x3 path and a coarse wide-context path, fused by 1x1x1.

    The coarse path average-pools x2, applies a 3x3x3 conv at half resolution (a 6^3-voxel
    footprint at full resolution) and upsamples back trilinearly; this gives broader shape
    context at 1/8 of the cost of a full-resolution conv. (A dilated conv would widen it more
    but falls on torch's slow CPU path.) The timestep enters
    as FiLM scale/shift after the fusion; the block is residual.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int | None, norm_kind: str = "group") -> None:
        super().__init__()
        self.norm_in = norm(cin, norm_kind)
        self.local = nn.Conv3d(cin, cout, 3, padding=1)
        self.coarse = nn.Conv3d(cin, cout, 3, padding=1)
        self.fuse = nn.Conv3d(2 * cout, cout, 1)
        self.norm_mid = norm(cout, norm_kind)
        self.film = ScaleShift(emb_dim, cout) if emb_dim else None
        self.out = nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.norm_in(x))
        fine = self.local(h)
        coarse = self.coarse(F.avg_pool3d(h, 2, ceil_mode=True))
        coarse = F.interpolate(coarse, size=h.shape[2:], mode="trilinear", align_corners=False)
        h = self.norm_mid(self.fuse(torch.cat([fine, coarse], dim=1)))
        if self.film is not None:
            h = self.film(h, emb)
        return self.skip(x) + self.out(F.silu(h))


class MemoryBlock(nn.Module):
    """Self-attention-less memory block: pool to a fixed grid, mix globally, upsample, gate.

    The features are adaptive-average-pooled to ``grid^3`` tokens (a fixed number, whatever the
    patch size), mixed across all token positions by an MLP-mixer token-mixing layer and a
    channel MLP, upsampled trilinearly back and added through a sigmoid gate (1x1x1 conv).
    Nothing is ever computed pairwise over voxels, so memory is linear in the voxel count.
    """

    def __init__(self, channels: int, grid: int = 4, emb_dim: int | None = None, norm_kind: str = "group") -> None:
        super().__init__()
        tokens = grid**3
        self.grid = grid
        self.norm = norm(channels, norm_kind)
        self.token_norm = nn.LayerNorm(channels)
        self.token_mix = nn.Sequential(nn.Linear(tokens, tokens), nn.GELU(), nn.Linear(tokens, tokens))
        self.channel_norm = nn.LayerNorm(channels)
        self.channel_mix = nn.Sequential(
            nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels)
        )
        self.film = ScaleShift(emb_dim, channels) if emb_dim else None
        self.gate = nn.Conv3d(2 * channels, channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        if self.film is not None:
            h = self.film(h, emb)
        tokens = F.adaptive_avg_pool3d(h, self.grid).flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = tokens + self.token_mix(self.token_norm(tokens).transpose(1, 2)).transpose(1, 2)
        tokens = tokens + self.channel_mix(self.channel_norm(tokens))
        b, n, c = tokens.shape
        memory = tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid, self.grid)
        memory = F.interpolate(memory, size=x.shape[2:], mode="trilinear", align_corners=False)
        gate = torch.sigmoid(self.gate(torch.cat([h, memory], dim=1)))
        return x + self.proj(gate * memory)
