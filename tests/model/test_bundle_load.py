"""MONAI bundles without a node: what export writes, and the clear refusals at load (a network
that does not take the declared channels, weights that do not fit, a bundle that is not one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ct2mri_node.errors import CheckpointError
from ct2mri_node.model.bundle import export_bundle, load_bundle
from ct2mri_node.model.checkpoint import load_checkpoint, state_dict_equal
from ct2mri_node.model.testing import make_foreign_bundle, make_tiny_checkpoint


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_export_writes_the_card_into_monai_metadata(tmp_path: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", arch="enhanced", seed=1)
    bundle = export_bundle(ckpt, tmp_path / "bundle")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    card = json.loads((ckpt / "card.json").read_text())
    assert (meta["name"], meta["version"]) == (card["name"], card["version"])
    node = meta["ct2mri_node"]
    for key in ("spacing_mm", "patch_size", "intensity", "sampling", "scheduler", "architecture"):
        assert node[key] == card[key], key
    assert "NOT FOR DIAGNOSIS" in meta["intended_use"] and "SYNTHETIC" in meta["intended_use"]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == card["network"]["in_channels"]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["network_def"]["config"] == card["network"]
    loaded, original = load_bundle(bundle), load_checkpoint(ckpt)
    assert loaded.source == "bundle" and loaded.weight_hash == original.weight_hash
    assert state_dict_equal(loaded.network.net.state_dict(), original.network.state_dict())
    with pytest.raises(CheckpointError, match="not an empty folder"):
        export_bundle(ckpt, bundle)                                   # never overwrites a bundle


def test_foreign_bundle_with_safetensors_weights_loads(tmp_path: Path) -> None:
    loaded = load_bundle(make_foreign_bundle(tmp_path / "b", weights="safetensors"))
    assert type(loaded.network.net).__name__ == "UNet" and loaded.card.spacing_mm == (4.0, 4.0, 4.0)
    assert loaded.card.network["ct_channels"] == 2


def test_network_that_does_not_take_the_declared_channels_is_refused(tmp_path: Path) -> None:
    bundle = make_foreign_bundle(tmp_path / "b")

    def three_windows(meta: dict[str, Any]) -> None:      # 3 CT windows declared, the UNet takes 2
        meta["ct2mri_node"]["intensity"]["ct"]["windows"].append({"level": 0.0, "width": 100.0})
        meta["network_data_format"]["inputs"]["image"]["num_channels"] = 3

    _edit(bundle / "configs" / "metadata.json", three_windows)
    with pytest.raises(CheckpointError, match="does not run on a 3-channel patch"):
        load_bundle(bundle)


def test_declared_channels_must_match_the_intensity_mapping(tmp_path: Path) -> None:
    bundle = make_foreign_bundle(tmp_path / "b")
    _edit(bundle / "configs" / "metadata.json",
          lambda meta: meta["network_data_format"]["inputs"]["image"].update(num_channels=4))
    with pytest.raises(CheckpointError, match=r"inputs\.image\.num_channels is 4.*makes 2 CT channel"):
        load_bundle(bundle)


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path: Path) -> None:
    bundle = make_foreign_bundle(tmp_path / "b")
    _edit(bundle / "configs" / "inference.json", lambda inf: inf["network_def"].update(channels=[8, 16]))
    with pytest.raises(CheckpointError, match="weights do not match the network of configs/inference.json"):
        load_bundle(bundle)


def test_a_config_that_cannot_build_a_network_is_refused(tmp_path: Path) -> None:
    bundle = make_foreign_bundle(tmp_path / "b")
    _edit(bundle / "configs" / "inference.json", lambda inf: inf["network_def"].update(_target_="NoSuchNet"))
    with pytest.raises(CheckpointError, match="cannot build the network"):
        load_bundle(bundle)
    with pytest.raises(CheckpointError, match="no configs/metadata.json"):
        load_bundle(tmp_path)
