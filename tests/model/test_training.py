"""Training: a few iterations on tiny arrays, resume, checkpoint usable by the Translator."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ct2mri_node.errors import CheckpointError, ConfigError
from ct2mri_node.model.checkpoint import load_checkpoint
from ct2mri_node.model.testing import tiny_prepared_cases
from ct2mri_node.model.trainer import STATE_FILE, PreparedCase
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.training.pairs import PairedCase
from ct2mri_node.training.train import TrainRequest, prepare_case, run_training
from ct2mri_node.model.pre_post import IntensityMapping


def tiny_cases() -> list[PreparedCase]:
    return tiny_prepared_cases()


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
    def stop_at_two(iteration: int, loss: float) -> None:
        if iteration == 2:
            raise KeyboardInterrupt  # as Ctrl-C or SIGTERM: the state is saved, the run stops

    with pytest.raises(KeyboardInterrupt):
        run_training(request(tmp_path / "a", "ddpm", 4), tiny_cases(), on_step=stop_at_two)
    assert torch.load(tmp_path / "a" / "run" / STATE_FILE, weights_only=False)["iteration"] == 2
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
    assert prepared.ct.shape == (4, 10, 10, 10)  # one channel per CT window
    assert prepared.mr.min() >= -1.0 and prepared.mr.max() <= 1.0
    assert prepared.mask.any()


def test_ema_carries_batchnorm_statistics(tmp_path: Path) -> None:
    """The averaged network normalises with the running statistics training reached, not the
    initial ones (mean 0, variance 1), or it would see every input at the wrong level."""
    path, _ = run_training(request(tmp_path, "unet", 4), tiny_cases())
    network = load_checkpoint(path).network
    means = [m.running_mean for m in network.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert means and any(float(m.abs().max()) > 0 for m in means)


def test_prepared_folder_trains_like_the_source_and_refuses_evaluation_families(tmp_path: Path) -> None:
    from ct2mri_node.errors import DataError
    from ct2mri_node.training import prepared
    from ct2mri_node.training.pairs import write_case

    for i in range(2):
        ct = np.full((12, 24, 24), -1000.0, np.float32)
        ct[2:10, 4:20, 4:20] = 40.0
        ct[4:8, 8:16, 8:16] = -100.0
        mr = np.where(ct > -500, 300.0, 0.0) + (ct < -50) * (ct > -500) * 600.0
        write_case(tmp_path / "data" / f"case{i}", PairedCase(f"case{i}", ct, mr.astype(np.float32), ct > -500,
                                                              (3.0, 3.0, 3.0)))
    out = prepared.write_prepared(tmp_path / "data", tmp_path / "prep", 3.0)
    from_folder = prepared.read_prepared(out, 3.0)
    direct = prepare_case(PairedCase("case0", ct, mr.astype(np.float32), ct > -500, (3.0, 3.0, 3.0)), 3.0,
                          IntensityMapping())
    again = prepared.finish(from_folder[0], IntensityMapping(), "fat")
    assert np.array_equal(again.ct, direct.ct) and np.allclose(again.mr, direct.mr, atol=2e-3)
    assert "2 paired CT/MR cases" in prepared.describe(out)
    with pytest.raises(DataError, match="prepared at 3.0 mm"):
        prepared.read_prepared(out, 2.0)
    (tmp_path / "data" / "case1" / "phantom.json").write_text(json.dumps({"family": "independent"}))
    with pytest.raises(DataError, match="evaluation only"):
        prepared.write_prepared(tmp_path / "data", tmp_path / "prep2", 3.0)


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


def test_init_starts_from_a_checkpoint_and_records_it(tmp_path: Path) -> None:
    """`train --init DIR`: a new run starts from DIR's weights (fine-tuning), says so in its card,
    and a resumed run keeps its own state."""
    base, _ = run_training(request(tmp_path / "base", "enhanced", 3), tiny_cases())
    origin = load_checkpoint(base).network.state_dict()
    still = replace(request(tmp_path / "tuned", "enhanced", 1), lr=1e-12, init=str(base))
    tuned, _ = run_training(still, tiny_cases())
    weights = load_checkpoint(tuned).network.state_dict()
    floats = [k for k, v in origin.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.allclose(weights[k], origin[k], atol=1e-6) for k in floats)
    card = json.loads((tuned / "card.json").read_text())
    assert card["training_command"].startswith("test (initialised from ct2mri-enhanced-demo")
    fresh, _ = run_training(replace(still, out=tmp_path / "fresh" / "run", init=None), tiny_cases())
    assert not all(torch.allclose(load_checkpoint(fresh).network.state_dict()[k], origin[k]) for k in floats)
    # resuming: the saved state wins over --init
    path, resumed = run_training(replace(still, iterations=2, init=str(fresh)), tiny_cases())
    assert resumed.resumed_from == 1
    assert json.loads((path / "card.json").read_text())["training_command"] == card["training_command"]


def test_init_with_another_network_is_a_config_error(tmp_path: Path) -> None:
    base, _ = run_training(request(tmp_path / "base", "enhanced", 1), tiny_cases())
    with pytest.raises(ConfigError, match="network"):
        run_training(replace(request(tmp_path / "wide", "enhanced", 1), base_channels=4, init=str(base)), tiny_cases())
    with pytest.raises(ConfigError, match="architecture"):
        run_training(replace(request(tmp_path / "unet", "unet", 1), init=str(base)), tiny_cases())
    with pytest.raises(ConfigError, match="no model.safetensors"):
        run_training(replace(request(tmp_path / "none", "enhanced", 1), init=str(tmp_path / "missing")), tiny_cases())
    assert not (tmp_path / "wide" / "run" / STATE_FILE).exists()
