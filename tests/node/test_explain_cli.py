"""``ct2mri-node explain``: the real CLI, as a subprocess, on CT series written by the project's
CT DICOM writer: every rule traced, the decision, JSON output and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ct2mri_node.training.ct_dicom import write_ct_series

CLI = Path(sys.executable).parent / "ct2mri-node"

CONFIG = """
destinations:
  - {name: tps, type: folder, path: ./tps}
  - {name: archive, type: folder, path: ./archive}
models:
  head:   {checkpoint: bundled, steps: 20}
  pelvis: {checkpoint: bundled, steps: 12}
rules:
  - name: research-sender
    match: {calling_ae: "^RESEARCH"}
    ignore: true
  - name: head-planning
    match: {BodyPartExamined: "head|brain", SliceThickness: {max: 3}}
    translate: head
  - name: pelvis-planning
    match: {BodyPartExamined: "pelvis|prostate"}
    translate: pelvis
    destinations: [tps]
  - name: chest
    match: {BodyPartExamined: "chest|thorax"}
    refuse: "chest CT is outside this node's intended use"
"""


def _series(folder: Path, body_part: str, thickness: float = 2.0) -> Path:
    """A 3-slice CT series; the first instance is renamed so that it sorts last by name."""
    paths = write_ct_series(np.zeros((3, 8, 8), dtype=np.float32), (thickness, 0.5, 0.5), folder,
                            seed=len(body_part), body_part=body_part, shuffle_names=True)
    paths[0].rename(folder / "zz-first.dcm")
    (folder / "README.txt").write_text("exported by a PACS\n")   # not DICOM: skipped
    return folder


def _explain(config: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "explain", "--config", str(config), str(folder), *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize(
    ("body_part", "thickness", "states", "entry_lines", "decision"),
    [
        ("HEAD", 2.0, ["MATCHED, decides", "not reached", "not reached"],
         ['held   BodyPartExamined: expected /head|brain/i, actual "HEAD"',
          'held   SliceThickness: expected <= 3, actual "2"'],
         "decision: translate with model 'head' (rule 'head-planning'), results to every destination"),
        ("PELVIS", 2.0, ["no match", "MATCHED, decides", "not reached"],
         ['FAILED BodyPartExamined: expected /head|brain/i, actual "PELVIS"',
          'held   BodyPartExamined: expected /pelvis|prostate/i, actual "PELVIS"'],
         "decision: translate with model 'pelvis' (rule 'pelvis-planning'), results to destinations tps"),
        ("CHEST", 5.0, ["no match", "no match", "MATCHED, decides"],
         ['FAILED SliceThickness: expected <= 3, actual "5"',
          'held   BodyPartExamined: expected /chest|thorax/i, actual "CHEST"'],
         "decision: refuse (rule 'chest'): chest CT is outside this node's intended use"),
        ("KNEE", 1.0, ["no match", "no match", "no match"],
         ['FAILED BodyPartExamined: expected /head|brain/i, actual "KNEE"',
          'held   SliceThickness: expected <= 3, actual "1"'],
         "decision: ignore (no rule matched)"),
    ],
)
def test_explain_prints_every_rule_and_the_decision(
    tmp_path: Path, config: Path, body_part: str, thickness: float, states: list[str],
    entry_lines: list[str], decision: str,
) -> None:
    folder = _series(tmp_path / body_part.lower(), body_part, thickness)
    run = _explain(config, folder)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"series: first instance zz-first.dcm of 3 DICOM file(s) in {folder} (1 other file(s) skipped)"
    assert "sender: unknown (use --calling-ae AE)" in lines
    assert "  1. research-sender: ignore: no match" in lines
    assert "       FAILED calling_ae: expected /^RESEARCH/i, actual (missing) [unknown sender]" in lines
    rule_lines = [ln for ln in lines if ln.startswith(("  2. ", "  3. ", "  4. "))]
    assert [ln.rsplit(": ", 1)[1] for ln in rule_lines] == states
    for line in entry_lines:
        assert f"       {line}" in lines
    assert lines[-1] == decision
    assert not (tmp_path / "tps").exists() and not (tmp_path / "archive").exists()   # nothing translated or sent


def test_calling_ae_and_json_output(tmp_path: Path, config: Path) -> None:
    folder = _series(tmp_path / "head", "HEAD")
    run = _explain(config, folder, "--calling-ae", "research_ct", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["decision"] == {"rule": "research-sender", "action": "ignore", "model": None,
                                "destinations": None, "reason": "ignored by rule 'research-sender'"}
    assert Path(data["instance"]).name == "zz-first.dcm" and data["dicom_files"] == 3
    assert [r["name"] for r in data["rules"]] == ["research-sender", "head-planning", "pelvis-planning", "chest"]
    assert [r["matched"] for r in data["rules"]] == [True, True, False, False]
    assert data["rules"][0]["entries"] == [{"key": "calling_ae", "expected": "/^RESEARCH/i", "actual": "research_ct",
                                            "held": True, "note": ""}]
    text = _explain(config, folder, "--calling-ae", "research_ct")
    assert "  2. head-planning: translate (model head, every destination): not reached (would also match)" \
        in text.stdout.splitlines()


def test_without_rules_the_only_model_translates(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("model: {checkpoint: bundled}\n")
    run = _explain(path, _series(tmp_path / "pelvis", "PELVIS"))
    assert run.returncode == 0, run.stderr
    assert "no rules section: every series is translated by the only model" in run.stdout
    assert run.stdout.splitlines()[-1] == \
        "decision: translate with model 'default' (no rules section), results to every destination"


def test_a_folder_without_dicom_is_an_error(tmp_path: Path, config: Path) -> None:
    empty = tmp_path / "not-dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here\n")
    run = _explain(config, empty)
    assert run.returncode == 3
    assert f"{empty} holds no DICOM file (1 other file(s) skipped)" in run.stderr
    missing = _explain(config, tmp_path / "nowhere")
    assert missing.returncode == 3 and "is not a folder" in missing.stderr
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text(CONFIG.replace("translate: pelvis\n", "translate: pelvs\n"))
    bad = _explain(bad_config, empty)
    assert bad.returncode == 2 and "rules[2].translate: no model named 'pelvs' (known: head, pelvis)" in bad.stderr
