"""Training on several processes (torchrun, gloo on the CPU), precision and resuming anywhere.

The DDP tests start real ``torchrun`` processes (two ranks, gloo), as a department would on
GPUs with NCCL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ct2mri_node.model.checkpoint import load_checkpoint
from ct2mri_node.model.testing import tiny_prepared_cases
from ct2mri_node.model.trainer import STATE_FILE, PreparedCase
from ct2mri_node.training.pairs import PairedCase, write_case
from ct2mri_node.training.train import TrainRequest, run_training

HERE = Path(__file__).parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
TRAIN = ["--arch", "enhanced", "--patch", "8", "--batch-size", "2", "--base-channels", "2", "--val-every", "1",
         "--device", "cpu", "--spacing", "3", "--workers", "1"]


def tiny_cases() -> list[PreparedCase]:
    return tiny_prepared_cases()


def request(out: Path, iterations: int, **kw: object) -> TrainRequest:
    return TrainRequest(data=out, out=out, arch="enhanced", iterations=iterations, batch_size=1, patch=8,
                        base_channels=2, val_every=2, seed=0, command="test", workers=0, **kw)  # type: ignore[arg-type]


def stop_at_two(iteration: int, loss: float) -> None:
    if iteration == 2:
        raise KeyboardInterrupt  # as Ctrl-C or SIGTERM: the state is saved, the run stops


def half_then_rest(out: Path, **kw: object) -> tuple[object, object]:
    """A 4-iteration run stopped after 2 (same schedule as one run), then resumed."""
    with pytest.raises(KeyboardInterrupt):
        run_training(request(out, 4, **kw), tiny_cases(), on_step=stop_at_two)
    return run_training(request(out, 4, **kw), tiny_cases())


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).network.state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def write_folder(root: Path, n: int = 2) -> Path:
    for i in range(n):
        ct = np.full((12, 24, 24), -1000.0, np.float32)
        ct[2:10, 4:20, 4:20] = 40.0
        ct[4:8, 8:16, 8:16] = -100.0
        mr = (ct > -500) * 300.0 + (ct < -50) * (ct > -500) * 600.0 + 10.0
        write_case(root / f"case{i}", PairedCase(f"case{i}", ct, mr.astype(np.float32), ct > -500, (3.0, 3.0, 3.0)))
    return root


def env(**extra: str) -> dict[str, str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    environment["PYTHONPATH"] = os.pathsep.join([str(HERE / "ddp"), os.environ.get("PYTHONPATH", "")])
    return environment


def torchrun(*args: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=environment)


def test_bf16_autocast_on_the_cpu_trains_and_resumes(tmp_path: Path) -> None:
    """--precision bf16 on the CPU: the forward pass under autocast, the card says bf16, a run
    stopped half-way resumes to the same weights as one run."""
    path, first = run_training(request(tmp_path / "one", 2, precision="bf16"), tiny_cases())
    assert first.precision == "bf16" and np.isfinite(first.last_loss)
    assert json.loads((path / "card.json").read_text())["training_precision"] == "bf16"
    path, resumed = half_then_rest(tmp_path / "a", precision="bf16")
    assert resumed.resumed_from == 2 and resumed.iterations == 4 and resumed.precision == "bf16"
    run_training(request(tmp_path / "b", 4, precision="bf16"), tiny_cases())
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    _, fp32 = run_training(request(tmp_path / "c", 4, precision="fp32"), tiny_cases())
    assert fp32.precision == "fp32" and not same(weights(tmp_path / "a"), weights(tmp_path / "c"))


def test_resume_under_another_device_name_and_from_an_old_state(tmp_path: Path) -> None:
    """A run saved under --device cpu resumes under --device auto (its state holds CPU tensors
    whatever device wrote it, and moves to the new one); a state written before issue 22 (with a
    numpy RNG state, no scaler, no world size) still resumes."""
    with pytest.raises(KeyboardInterrupt):
        run_training(request(tmp_path / "a", 4, device="cpu"), tiny_cases(), on_step=stop_at_two)
    state = torch.load(tmp_path / "a" / STATE_FILE, weights_only=False)
    tensors = [v for v in state["network"].values()] + [
        t for s in state["optimizer"]["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    _, resumed = run_training(request(tmp_path / "a", 4, device="auto"), tiny_cases())
    assert resumed.resumed_from == 2
    run_training(request(tmp_path / "b", 4, device="cpu"), tiny_cases())
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))

    with pytest.raises(KeyboardInterrupt):
        run_training(request(tmp_path / "old", 4), tiny_cases(), on_step=stop_at_two)
    old = torch.load(tmp_path / "old" / STATE_FILE, weights_only=False)
    old["rng"] = {"numpy": np.random.default_rng(0).bit_generator.state, "torch": old["rng"]["torch"]}
    del old["scaler"], old["world_size"]
    torch.save(old, tmp_path / "old" / STATE_FILE)
    _, from_old = run_training(request(tmp_path / "old", 4), tiny_cases())
    assert from_old.resumed_from == 2 and from_old.iterations == 4
    assert same(weights(tmp_path / "old"), weights(tmp_path / "b"))


def test_ddp_ranks_hold_identical_weights_after_one_step(tmp_path: Path) -> None:
    """Two gloo ranks draw different patches (their losses differ) yet, gradients averaged,
    hold the same parameters after the step."""
    (tmp_path / "report").mkdir()
    done = torchrun(str(HERE / "ddp" / "ddp_worker.py"), str(tmp_path / "report"), str(tmp_path / "run"),
                    environment=env())
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "report" / f"rank{r}.pt") for r in (0, 1))
    assert (r0["rank"], r0["world"], r1["rank"], r1["world"]) == (0, 2, 1, 2)
    assert r0["loss"] != r1["loss"], "both ranks drew the same patches"  # unet: no noise in the loss
    assert r0["params"].keys() == r1["params"].keys()
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    saved = torch.load(tmp_path / "run" / STATE_FILE, weights_only=False)
    assert saved["iteration"] == 1 and saved["world_size"] == 2
    assert any(not torch.equal(saved["network"][k], torch.zeros(())) for k in r0["params"])


def test_torchrun_train_command_only_rank0_writes_and_resumes_with_one_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m ct2mri_node train` on the CPU: rank 0 alone writes state,
    grid cache and checkpoint (rank 1 writes nothing under --out); the run then resumes in one
    process from the same state, and again in two."""
    data = write_folder(tmp_path / "data")
    out = tmp_path / "out"
    (tmp_path / "writes").mkdir()
    environment = env(CT2MRI_WATCH=str(out), CT2MRI_WRITES=str(tmp_path / "writes"))
    cmd = ["-m", "ct2mri_node", "train", "--data", str(data), "--out", str(out), *TRAIN]
    done = torchrun(*cmd, "--iterations", "2", environment=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint written to") == 1
    card = json.loads((out / "card.json").read_text())
    assert card["iterations"] == 2 and card["training_precision"] == "fp32"
    rank0 = (tmp_path / "writes" / "rank0.txt").read_text()
    assert "last.tmp" in rank0 and "grid-cache" in rank0
    assert not (tmp_path / "writes" / "rank1.txt").exists(), (tmp_path / "writes" / "rank1.txt").read_text()

    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["iteration"] == 2 and state["world_size"] == 2
    # one process, no more iterations: the checkpoint is the saved state's averaged network
    _, same_point = run_training(TrainRequest(data=data, out=out, arch="enhanced", iterations=2, batch_size=2,
                                              patch=8, base_channels=2, val_every=1, spacing_mm=3.0, workers=0))
    assert same_point.resumed_from == 2 and same_point.world_size == 1  # the state says: saved by 2
    assert same({k: v for k, v in state["ema"].items()}, weights(out))
    one = subprocess.run([sys.executable, *cmd, "--iterations", "3"], check=False, capture_output=True, text=True, timeout=300,
                         env=env())
    assert one.returncode == 0, one.stderr[-3000:]
    assert "resuming enhanced training at iteration 2 (saved by 1 process(es), now 1)" in one.stderr
    assert json.loads((out / "card.json").read_text())["iterations"] == 3
    # and back to two processes: rank 1 gets the state from rank 0
    two = torchrun(*cmd, "--iterations", "4", environment=env())
    assert two.returncode == 0, two.stderr[-3000:]
    assert "resuming enhanced training at iteration 3 (saved by 1 process(es), now 2)" in two.stderr
    assert two.stderr.count("resuming enhanced training at iteration 3") == 2  # both ranks resumed there
    assert torch.load(out / STATE_FILE, weights_only=False)["iteration"] == 4
