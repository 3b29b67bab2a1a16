"""Evaluation end to end: phantoms -> tiny checkpoint -> translate -> metrics, montage, JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ct2mri_node.model import testing  # the tiny checkpoint
from ct2mri_node.training.phantoms import write_phantoms

CASE_KEYS = {"name", "mae", "psnr", "ssim", "network_evaluations", "seconds", "montage", "correlation",
             "tissue_order", "tissue_table", "t1w", "uniformity", "seam_ratio", "texture"}
MEAN_KEYS = {"mae", "psnr", "ssim", "network_evaluations", "seconds", "correlation", "tissue_order_cases",
             "t1w_cases"}
OPTIONAL_MEAN_KEYS = {"tissue_order", "t1w_all_held", "uniformity", "seam_ratio", "texture_spectrum",
                      "texture_gradient"}
REPORT_KEYS = {"data", "model", "settings", "device", "metric_definition", "cases", "mean", "worst", "peak_memory"}
WORST_KEYS = {"t1w_all_held", "t1w_failed_cases", "correlation", "uniformity", "seam_ratio"}


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
        assert -1.0 <= case["correlation"] <= 1.0
        order = case["tissue_order"]  # phantoms have labels; tiny grids may leave no check applicable
        assert set(order) == {"score", "held", "total", "failed"}
        assert order["held"] + len(order["failed"]) == order["total"]
        assert order["score"] is None if order["total"] == 0 else order["score"] == order["held"] / order["total"]
    assert loaded["mean"]["mae"] == pytest.approx(sum(c["mae"] for c in loaded["cases"]) / 2)
    assert MEAN_KEYS <= set(loaded["mean"]) <= MEAN_KEYS | OPTIONAL_MEAN_KEYS
    assert set(loaded["worst"]) == WORST_KEYS
    assert loaded["worst"]["correlation"] == pytest.approx(min(c["correlation"] for c in loaded["cases"]))
    for case in loaded["cases"]:
        t1w = case["t1w"]
        assert set(t1w) == {"held", "total", "all_held", "failed"} and t1w["held"] + len(t1w["failed"]) == t1w["total"]
        assert set(case["uniformity"]) >= {"min"}
        assert set(case["texture"]) == {"spectrum", "gradient"} and min(case["texture"].values()) > 0
    assert loaded["mean"]["texture_spectrum"] == pytest.approx(sum(c["texture"]["spectrum"] for c in loaded["cases"]) / 2)
    assert "T1w checks" in loaded["metric_definition"] and "Seam ratio" in loaded["metric_definition"]
    assert loaded["mean"]["correlation"] == pytest.approx(sum(c["correlation"] for c in loaded["cases"]) / 2)
    scores = [c["tissue_order"]["score"] for c in loaded["cases"] if c["tissue_order"]["score"] is not None]
    assert loaded["mean"]["tissue_order_cases"] == len(scores)
    assert loaded["mean"].get("tissue_order") == (pytest.approx(sum(scores) / len(scores)) if scores else None)
    assert "Tissue order" in loaded["metric_definition"] and "Correlation" in loaded["metric_definition"]
    assert loaded["model"]["architecture"] == "enhanced" and len(loaded["model"]["weight_hash"]) == 64
    assert loaded["settings"]["steps"] == 1 and loaded["device"] == "cpu"
    assert loaded["peak_memory"]["process_max_rss_bytes"] > 10 * 2**20
    table = format_table(loaded)
    assert "case000_head" in table and "mean" in table and " r " in table and "order" in table
    assert "T1w" in table and "unif" in table and "seam" in table and "tex" in table and "worst:" in table


class _Echo:
    """A stand-in translator that returns a fixed volume as the synthetic MR (and, given, window edges)."""

    def __init__(self, volume: np.ndarray, edges: list[np.ndarray] | None = None) -> None:
        self.volume = volume
        self.edges = edges

    def translate(self, ct: np.ndarray, spacing: tuple[float, float, float]) -> SimpleNamespace:
        result = SimpleNamespace(mr=self.volume, network_evaluations=1, seconds=0.0)
        if self.edges is not None:
            result.window_edges = tuple(self.edges)
        return result


def test_case_scores_with_labels_perfect_and_inverted(tmp_path: Path) -> None:
    """On a held-out case with labels: the real MR scores 1.0 on tissue order, its inverse low."""
    from ct2mri_node.training.evaluate import evaluate_case, format_table
    from ct2mri_node.training.families import write_family
    from ct2mri_node.training.pairs import load_case, load_labels

    folder = write_family(tmp_path, "heldout", 1, seed=4, kinds=("adult_head",))[0]
    case, labels = load_case(folder), load_labels(folder)
    perfect = evaluate_case(_Echo(case.mr), case, labels=labels)
    assert perfect.tissue_order is not None and perfect.tissue_order["score"] == 1.0
    assert perfect.tissue_order["failed"] == [] and perfect.tissue_order["total"] >= 7
    assert perfect.correlation == pytest.approx(1.0) and perfect.ssim == pytest.approx(1.0)
    inverted = evaluate_case(_Echo(case.mr.max() - case.mr), case, labels=labels)
    assert inverted.tissue_order is not None and inverted.tissue_order["score"] <= 0.2
    assert "white_matter > grey_matter" in inverted.tissue_order["failed"]
    assert inverted.correlation == pytest.approx(-1.0)
    unlabelled = evaluate_case(_Echo(case.mr), case)
    assert unlabelled.tissue_order is None
    report = {"cases": [asdict(inverted), asdict(unlabelled)],
              "mean": {"mae": 0.1, "psnr": 20.0, "ssim": 0.5, "network_evaluations": 1, "seconds": 0.0},
              "model": {"name": "m", "version": "1", "architecture": "a"}, "device": "cpu",
              "peak_memory": {"process_max_rss_bytes": 2**20}}
    table = format_table(report)  # an old report's mean (no correlation/order) still formats
    assert "tissue order fails" in table and "white_matter > grey_matter" in table


def test_independent_case_checks_in_the_report_and_table(tmp_path: Path) -> None:
    """The truth of an independent case passes every check; tiles of offsets and bright CSF are caught."""
    from ct2mri_node.training.evaluate import _mean, _worst, evaluate_case, format_table
    from ct2mri_node.training.families import write_family
    from ct2mri_node.training.pairs import load_case, load_labels

    folder = write_family(tmp_path, "independent", 1, seed=3, kinds=("adult_head",))[0]
    case, labels = load_case(folder), load_labels(folder)
    assert labels is not None
    edges = [np.arange(16, n, 16) - 0.5 for n in case.mr.shape]
    truth = evaluate_case(_Echo(case.mr, edges), case, labels=labels)
    assert truth.t1w is not None and truth.t1w["all_held"] is True and truth.t1w["total"] >= 10
    assert truth.uniformity is not None and truth.uniformity["min"] >= 3.0
    assert truth.seam_ratio == pytest.approx(1.0, abs=0.05)
    assert truth.tissue_table is not None and truth.tissue_table["csf"]["synthetic_mean"] == pytest.approx(
        truth.tissue_table["csf"]["true_mean"])
    tiles = np.indices(case.mr.shape) // 16
    offsets = np.random.default_rng(0).normal(0.0, 0.08, tuple(int(t.max()) + 1 for t in tiles))
    tiled = evaluate_case(_Echo((case.mr * (1.0 + offsets[tiles[0], tiles[1], tiles[2]])).astype(np.float32),
                                edges), case, labels=labels)
    assert tiled.seam_ratio is not None and tiled.seam_ratio > 1.3
    bright = case.mr.copy()
    bright[labels[0] == next(k for k, v in labels[1].items() if v == "csf")] = 2.0 * case.mr.max()
    wrong = evaluate_case(_Echo(bright), case, labels=labels)  # no window edges: no seam ratio
    assert wrong.t1w is not None and wrong.t1w["all_held"] is False and "grey_matter > csf" in wrong.t1w["failed"]
    assert wrong.seam_ratio is None
    results = [truth, tiled, wrong]
    mean, worst = _mean(results), _worst(results)
    assert mean["t1w_all_held"] == pytest.approx(2 / 3) and mean["t1w_cases"] == 3
    assert mean["seam_ratio"] == pytest.approx((truth.seam_ratio + tiled.seam_ratio) / 2)
    assert worst["t1w_all_held"] is False and worst["t1w_failed_cases"] == [case.name]
    assert worst["seam_ratio"] == tiled.seam_ratio
    assert worst["uniformity"] == min(r.uniformity["min"] for r in results if r.uniformity)
    report = {"cases": [asdict(r) for r in results], "mean": mean, "worst": worst,
              "model": {"name": "m", "version": "1", "architecture": "a"}, "device": "cpu",
              "peak_memory": {"process_max_rss_bytes": 2**20}}
    json.dumps(report, allow_nan=False)
    table = format_table(report)
    assert "T1w checks fail grey_matter > csf" in table and "NOT every case" in table
    assert "synthetic mean +- SD" in table and "white_matter" in table


def test_evaluate_command(setup: tuple[Path, Path]) -> None:
    root, checkpoint = setup
    out = root / "cli.json"
    cli = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "evaluate", "--data", str(root / "data"), "--checkpoint",
         str(checkpoint), "--steps", "2", "--seed", "3", "--samples", "2", "--device", "cpu", "--limit", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert "case000_head" in cli.stdout and "mean" in cli.stdout
    report = json.loads(out.read_text())
    assert len(report["cases"]) == 1 and report["settings"]["seed"] == 3 and report["settings"]["samples"] == 2
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


def test_evaluate_command_rejects_zero_samples(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, checkpoint = setup
    cli = subprocess.run(
        [sys.executable, "-m", "ct2mri_node", "evaluate", "--data", str(root / "data"), "--checkpoint",
         str(checkpoint), "--samples", "0", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 2 and "--samples" in cli.stderr
