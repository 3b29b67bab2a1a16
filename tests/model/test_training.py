"""Training: a few iterations on tiny arrays, resume, checkpoint usable by the Translator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ct2mri_node.errors import CheckpointError, ConfigError
from ct2mri_node.model.checkpoint import load_checkpoint
from ct2mri_node.model.trainer import STATE_FILE, PreparedCase
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.training.pairs import PairedCase
from ct2mri_node.training.train import TrainRequest, prepare_case, run_training
from ct2mri_node.model.pre_post import IntensityMapping


def tiny_cases() -> list[PreparedCase]:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        ct = np.full((12, 20, 20), -1.0, np.float32)
        ct[2:10, 4:16, 4:16] = 0.1
        mr = np.where(ct > -1, 0.5, -1.0).astype(np.float32) + rng.normal(0, 0.05, ct.shape).astype(np.float32)
        cases.append(PreparedCase(f"case{i}", ct, mr, ct > -1))
    return cases


def request(tmp_path: Path, arch: str, iterations: int) -> TrainRequest:
    return TrainRequest(data=tmp_path, out=tmp_path / "run", arch=arch, iterations=iterations, batch_size=1,
                        patch=8, base_channels=2, val_every=2, seed=0, command="test")


@pytest.mark.parametrize("arch", ["enhanced", "unet"])
def test_train_three_iterations_then_resume(tmp_path: Path, arch: str) -> None:
    path, first = run_training(request(tmp_path, arch, 3), tiny_cases())
    assert first.iterations == 3 and first.resumed_from == 0 and np.isfinite(first.last_loss)
    state = torch.load(path / STATE_FILE, weights_only=False)
    assert state["iteration"] == 3
    path, second = run_training(request(tmp_path, arch, 5), tiny_cases())
    assert second.resumed_from == 3 and second.iterations == 5
    card = json.loads((path / "card.json").read_text())
    assert card["iterations"] == 5 and card["architecture"] == arch and card["training_command"] == "test"
    ct = np.full((16, 24, 24), -1000.0, np.float32)
    ct[3:13, 5:19, 5:19] = 40.0
    result = Translator(path, TranslationSettings(steps=2)).translate(ct, (3.0, 3.0, 3.0))
    assert result.mr.shape == ct.shape


def test_resume_is_equivalent_to_one_run(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_training(request(tmp_path / "a", "ddpm", 2), tiny_cases())
    path_a, _ = run_training(request(tmp_path / "a", "ddpm", 4), tiny_cases())
    path_b, _ = run_training(request(tmp_path / "b", "ddpm", 4), tiny_cases())
    a, b = load_checkpoint(path_a).network.state_dict(), load_checkpoint(path_b).network.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_with_another_architecture_is_refused(tmp_path: Path) -> None:
    run_training(request(tmp_path, "ddpm", 1), tiny_cases())
    with pytest.raises(CheckpointError, match="another architecture"):
        run_training(request(tmp_path, "enhanced", 2), tiny_cases())


def test_invalid_patch_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--patch"):
        run_training(TrainRequest(data=tmp_path, out=tmp_path / "o", patch=12), tiny_cases())


def test_prepare_case_resamples_and_normalises() -> None:
    ct = np.full((10, 20, 20), -1000.0, np.float32)
    ct[2:8, 5:15, 5:15] = 0.0
    mr = np.where(ct > -500, 300.0, 0.0).astype(np.float32)
    case = PairedCase("p", ct, mr, ct > -500, (3.0, 1.5, 1.5))
    prepared = prepare_case(case, 3.0, IntensityMapping())
    assert prepared.ct.shape == (10, 10, 10)
    assert prepared.mr.min() >= -1.0 and prepared.mr.max() <= 1.0
    assert prepared.mask.any()


def test_train_command_runs_and_resumes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from ct2mri_node.training.pairs import write_case

    for i in range(2):
        ct = np.full((12, 24, 24), -1000.0, np.float32)
        ct[2:10, 4:20, 4:20] = 40.0
        write_case(tmp_path / "data" / f"case{i}", PairedCase(f"case{i}", ct, (ct > -500) * 300.0 + 10.0,
                                                              ct > -500, (3.0, 3.0, 3.0)))
    cmd = [sys.executable, "-m", "ct2mri_node", "train", "--data", str(tmp_path / "data"), "--out",
           str(tmp_path / "ckpt"), "--arch", "ddpm", "--patch", "8", "--batch-size", "1", "--base-channels", "2",
           "--val-every", "1"]
    first = subprocess.run([*cmd, "--iterations", "2"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*cmd, "--iterations", "3"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resuming ddpm training at iteration 2" in second.stderr
    assert json.loads((tmp_path / "ckpt" / "card.json").read_text())["iterations"] == 3
    bad = subprocess.run([*cmd, "--patch", "12"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--patch must be a positive multiple of 8" in bad.stderr
