"""Network shapes, parameter-count matching and the memory block's linear memory."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ct2mri_node.errors import CheckpointError
from ct2mri_node.model.blocks import MemoryBlock, TransformBlock
from ct2mri_node.model.networks import (
    ARCHITECTURES, DEFAULT_CONFIG, build_network, matched_base_channels, network_config, parameter_count,
)

TINY = {"base_channels": 4, "levels": 2, "memory_grid": 2}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_network_output_shape(arch: str) -> None:
    torch.manual_seed(0)
    config = network_config(arch, **TINY)
    net = build_network(arch, config)
    cin = config["in_channels"]
    assert cin == (4 if arch == "unet" else 5)  # four CT windows (+ the noisy MR)
    x = torch.randn(2, cin, 8, 16, 12)
    out = net(x, torch.tensor([3, 700]))
    assert out.shape == (2, 1, 8, 16, 12)
    assert torch.isfinite(out).all()


def test_diffusion_networks_need_a_timestep() -> None:
    with pytest.raises(ValueError, match="timestep"):
        build_network("ddpm", TINY)(torch.zeros(1, 2, 8, 8, 8))


def test_unknown_architecture_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="unknown architecture"):
        build_network("transformer", TINY)


def test_timestep_changes_the_output() -> None:
    torch.manual_seed(0)
    net = build_network("enhanced", TINY)
    x = torch.randn(1, 2, 8, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([1])), net(x, torch.tensor([900])))


@pytest.mark.parametrize("arch", ["ddpm", "unet"])
def test_baselines_match_the_enhanced_parameter_count(arch: str) -> None:
    reference = network_config("enhanced", **DEFAULT_CONFIG)
    base = matched_base_channels(arch, reference)
    enhanced = parameter_count(build_network("enhanced", reference))
    baseline = parameter_count(build_network(arch, {**reference, "base_channels": base}))
    assert abs(baseline / enhanced - 1.0) <= 0.10


def test_transform_block_keeps_odd_shapes() -> None:
    block = TransformBlock(4, 8, 16)
    out = block(torch.randn(1, 4, 5, 7, 9), torch.randn(1, 16))
    assert out.shape == (1, 8, 5, 7, 9)


def _allocated_bytes(block: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        block(x)
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


def test_memory_block_memory_is_linear_in_voxels() -> None:
    torch.manual_seed(0)
    block = MemoryBlock(8, grid=4)
    small = _allocated_bytes(block, torch.randn(1, 8, 16, 16, 16))
    double = _allocated_bytes(block, torch.randn(1, 8, 32, 16, 16))
    quadruple = _allocated_bytes(block, torch.randn(1, 8, 32, 32, 16))
    # attention over voxels would grow 4x per doubling; a linear block grows ~2x
    assert 1.6 < double / small < 2.4
    assert 1.6 < quadruple / double < 2.4


def test_a_stored_config_without_the_new_keys_is_a_v02_network() -> None:
    """Cards of model 0.2 name neither ct_channels nor norm: one CT channel and GroupNorm."""
    net = build_network("enhanced", TINY)
    assert net.stem.in_channels == 2
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    new = build_network("enhanced", network_config("enhanced", **TINY))
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in new.modules())
    with pytest.raises(CheckpointError, match="normalisation"):
        network_config("enhanced", norm="layer")

