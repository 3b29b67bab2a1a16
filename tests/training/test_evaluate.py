"""Evaluation end to end: phantoms -> tiny checkpoint -> translate -> metrics, montage, JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ct2mri_node.training.phantoms import write_phantoms

testing = pytest.importorskip("ct2mri_node.model.testing", reason="the model package provides the tiny checkpoint")

CASE_KEYS = {"name", "mae", "psnr", "ssim", "network_evaluations", "seconds", "montage"}
REPORT_KEYS = {"data", "model", "settings", "device", "metric_definition", "cases", "mean", "peak_memory"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three tiny phantom cases (two are evaluated) and a tiny random checkpoint."""
    root = tmp_path_factory.mktemp("evaluate")
    write_phantoms(root / "data", 3, seed=2, shape=(12, 32, 32), spacing=(6.0, 4.0, 4.0))
    checkpoint = testing.make_tiny_checkpoint(root / "ckpt")
    return root, Path(checkpoint)


def test_evaluate_reports_every_case_with_finite_numbers(setup: tuple[Path, Path], tmp_path: Path) -> None:
    from ct2mri_node.model.translator import TranslationSettings
    from ct2mri_node.training.evaluate import evaluate, format_table, write_report

    root, checkpoint = setup
    seen: list[str] = []
    report = evaluate(root / "data", checkpoint, TranslationSettings(steps=1, device="cpu"), limit=2,
                      montage_dir=tmp_path / "montages", on_case=lambda r: seen.append(r.name))
    assert seen == ["case000_head", "case001_pelvis"]
    path = write_report(report, tmp_path / "out" / "report.json")
    loaded = json.loads(path.read_text())
    assert set(loaded) == REPORT_KEYS
    assert [c["name"] for c in loaded["cases"]] == seen
    for case in loaded["cases"]:
        assert set(case) == CASE_KEYS
        assert all(math.isfinite(case[k]) for k in ("mae", "psnr", "ssim", "seconds"))
        assert 0.0 <= case["mae"] <= 1.0 and -1.0 <= case["ssim"] <= 1.0
        assert case["network_evaluations"] > 0
        assert Path(case["montage"]).is_file()
    assert loaded["mean"]["mae"] == pytest.approx(sum(c["mae"] for c in loaded["cases"]) / 2)
    assert loaded["model"]["architecture"] == "enhanced" and len(loaded["model"]["weight_hash"]) == 64
    assert loaded["settings"]["steps"] == 1 and loaded["device"] == "cpu"
    assert loaded["peak_memory"]["process_max_rss_bytes"] > 10 * 2**20
    table = format_table(loaded)
    assert "case000_head" in table and "mean" in table


def test_evaluate_command(setup: tuple[Path, Path]) -> None:
    root, checkpoint = setup
    out = root / "cli.json"
    cli = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "evaluate", "--data", str(root / "data"), "--checkpoint",
         str(checkpoint), "--steps", "1", "--seed", "3", "--device", "cpu", "--limit", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert "case000_head" in cli.stdout and "mean" in cli.stdout
    report = json.loads(out.read_text())
    assert len(report["cases"]) == 1 and report["settings"]["seed"] == 3
    assert report["cases"][0]["montage"] is None


def test_evaluate_command_without_cases_fails_clearly(setup: tuple[Path, Path], tmp_path: Path) -> None:
    _, checkpoint = setup
    cli = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "evaluate", "--data", str(tmp_path), "--checkpoint",
         str(checkpoint), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 3 and "no cases in" in cli.stderr
    assert not (tmp_path / "r.json").exists()
