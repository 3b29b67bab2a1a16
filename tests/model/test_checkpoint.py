"""Checkpoint save/load round trip, weight hash, and clear errors for broken checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ct2mri_node.errors import CheckpointError
from ct2mri_node.model.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint, state_dict_equal
from ct2mri_node.model.networks import build_network
from ct2mri_node.model.testing import make_tiny_checkpoint, tiny_card


def test_round_trip_keeps_weights_card_and_hash(tmp_path: Path) -> None:
    card = tiny_card("ddpm", seed=5)
    net = build_network("ddpm", card.network)
    save_checkpoint(tmp_path, card, net)
    loaded = load_checkpoint(tmp_path)
    assert state_dict_equal(loaded.network.state_dict(), net.state_dict())
    assert loaded.card == card and loaded.card.prediction_type == "v_prediction"
    assert loaded.weight_hash == hashlib.sha256((tmp_path / WEIGHTS).read_bytes()).hexdigest()
    card_json = json.loads((tmp_path / "card.json").read_text())
    assert card_json["scheduler"]["num_train_timesteps"] == 1000 and card_json["spacing_mm"] == [4.0, 4.0, 4.0]


def test_tiny_checkpoint_is_deterministic(tmp_path: Path) -> None:
    # several saves: the file's bytes must not depend on hash-map order (safetensors metadata)
    same = {load_checkpoint(make_tiny_checkpoint(tmp_path / f"a{i}", "enhanced", seed=1)).weight_hash for i in range(6)}
    c = load_checkpoint(make_tiny_checkpoint(tmp_path / "c", "enhanced", seed=2))
    assert len(same) == 1 and c.weight_hash not in same


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "nowhere")


def test_missing_bundled_model_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an installation without the package data (e.g. a wheel built without it)
    monkeypatch.setattr("ct2mri_node.model.checkpoint.BUNDLED_DIR", tmp_path / "bundled")
    with pytest.raises(CheckpointError, match="bundled model is not installed"):
        load_checkpoint("bundled")


def test_corrupt_weights(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    ckpt = shutil.copytree(tiny_checkpoints["unet"], tmp_path / "ckpt")
    (ckpt / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ckpt)


def test_card_and_weights_mismatch(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    ckpt = shutil.copytree(tiny_checkpoints["enhanced"], tmp_path / "ckpt")
    card = json.loads((ckpt / "card.json").read_text())
    card["network"]["base_channels"] = 8
    (ckpt / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.pop("architecture"), "lacks architecture"),
    (lambda c: c.update(colour="blue"), "unknown keys"),
    (lambda c: c.update(architecture="gan"), "unknown architecture"),
])
def test_invalid_cards(tiny_checkpoints: dict[str, Path], tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    ckpt = shutil.copytree(tiny_checkpoints["ddpm"], tmp_path / "ckpt")
    card = json.loads((ckpt / "card.json").read_text())
    edit(card)
    (ckpt / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)
