"""Routing configuration (issue 13): named models, rules and their errors, each naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ct2mri_node.config import DEFAULT_MODEL_NAME, RangeMatch, load_config
from ct2mri_node.errors import ConfigError

# The issue's "Config keys (exact)" block, plus the destinations its rules name.
ISSUE_EXAMPLE = """
destinations:
  - {name: tps, type: folder, path: ./tps}
  - {name: archive, type: folder, path: ./archive}
models:
  head:   {checkpoint: bundled, steps: 20}
  pelvis: {checkpoint: bundled, steps: 12}
rules:
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
series:
  open_association_quiet_s: 10
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "node.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    return str(info.value)


def test_issue_example_parses(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ISSUE_EXAMPLE))
    models = config.named_models()
    assert list(models) == ["head", "pelvis"] and models["head"].steps == 20 and models["pelvis"].steps == 12
    assert config.rules is not None
    assert [(r.name, r.action) for r in config.rules] == [
        ("head-planning", "translate"), ("pelvis-planning", "translate"), ("chest", "refuse")]
    head, pelvis, chest = config.rules
    assert head.match == {"BodyPartExamined": "head|brain", "SliceThickness": RangeMatch(max=3)}
    assert head.destinations is None and pelvis.destinations == ["tps"]
    assert chest.refuse == "chest CT is outside this node's intended use"
    assert config.series.open_association_quiet_s == 10.0


def test_single_model_section_is_one_model_named_default(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "model: {checkpoint: ckpt/mine, steps: 7}\n"))
    assert list(config.named_models()) == [DEFAULT_MODEL_NAME]
    assert config.named_models()[DEFAULT_MODEL_NAME].steps == 7
    assert config.rules is None
    assert list(load_config(_write(tmp_path, "{}\n")).named_models()) == ["default"]


def test_relative_checkpoints_resolve_in_every_named_model(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace("head:   {checkpoint: bundled", "head:   {checkpoint: ckpt/head").replace(
        "pelvis: {checkpoint: bundled", f"pelvis: {{checkpoint: {tmp_path / 'abs'}")
    models = load_config(_write(tmp_path, text)).named_models()
    assert models["head"].checkpoint == str((tmp_path / "conf" / "ckpt" / "head").resolve())
    assert models["pelvis"].checkpoint == str(tmp_path / "abs")


def test_new_keys_have_their_defaults_and_bounds(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "{}\n"))
    assert config.worker.max_loaded_models == 2 and config.series.open_association_quiet_s == 10.0
    assert load_config(_write(tmp_path, "worker: {max_loaded_models: 1}\n")).worker.max_loaded_models == 1
    assert "worker.max_loaded_models: " in _error(tmp_path, "worker: {max_loaded_models: 0}\n")
    assert "series.open_association_quiet_s: " in _error(tmp_path, "series: {open_association_quiet_s: -1}\n")
    assert load_config(_write(tmp_path, "series: {open_association_quiet_s: 0}\n")).series.open_association_quiet_s == 0


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # models
        ("  head:   {checkpoint: bundled, steps: 20}", "  head:   {checkpoint: bundled, steps: 20}\n  'bad name': {}",
         "models.bad name: 'bad name' is not a model name (1-64 letters, digits, '_', '.', '-')"),
        ("models:", "model: {steps: 3}\nmodels:", "models: both model and models are given"),
        ("  pelvis: {checkpoint: bundled, steps: 12}", "  pelvis: {checkpoint: bundled, steps: 0}",
         "models.pelvis.steps: "),
        # rules: actions
        ("    translate: head\n", "    translate: head\n    refuse: thick\n",
         "rules[0]: a rule has exactly one action (translate, ignore or refuse); this one has translate and refuse"),
        ("    translate: head\n", "    translate: head\n    ignore: true\n    refuse: thick\n",
         "rules[0]: a rule has exactly one action (translate, ignore or refuse); this one has translate, ignore and refuse"),
        ("    translate: head\n", "\n",
         "rules[0]: a rule has exactly one action (translate, ignore or refuse); this one has none"),
        ("    translate: head\n", "    ignore: false\n", "rules[0].ignore: ignore: false is not an action"),
        ("refuse: \"chest CT is outside this node's intended use\"", "refuse: '  '",
         "rules[2].refuse: a refusal needs a reason (non-empty text)"),
        ("translate: pelvis\n", "translate: pelvs\n",
         "rules[1].translate: no model named 'pelvs' (known: head, pelvis)"),
        ("refuse: \"chest CT is outside this node's intended use\"", "ignore: true\n    destinations: [tps]",
         "rules[2].destinations: only a translate rule has destinations; this one ignores"),
        ("refuse: \"chest CT is outside this node's intended use\"", "refuse: out of scope\n    destinations: [tps]",
         "rules[2].destinations: only a translate rule has destinations; this one refuses"),
        ("destinations: [tps]", "destinations: [tps, pacs]",
         "rules[1].destinations[1]: no destination named 'pacs' (known: tps, archive)"),
        ("destinations: [tps]", "destinations: []", "rules[1].destinations: an empty list sends nowhere"),
        ("destinations: [tps]", "destinations: [tps, tps]", "rules[1].destinations: repeated: tps"),
        # rules: names
        ("name: chest", "name: head-planning",
         "rules[2].name: 'head-planning' is already the name of rules[0]; rule names must be unique"),
        ("name: chest", "name: ''", "rules[2].name: "),
        ("name: chest", "name: " + "x" * 65, "rules[2].name: "),
        ("name: chest", "name: chest\n    when: never", "rules[2].when: Extra inputs are not permitted"),
        # rules: match
        ('BodyPartExamined: "chest|thorax"', 'BodyPart: "chest"',
         "rules[2].match.BodyPart: 'BodyPart' is neither a DICOM keyword"),
        ('BodyPartExamined: "chest|thorax"', 'BodyPartExamind: "chest"', "did you mean BodyPartExamined?"),
        ('"pelvis|prostate"', '"pelvis|(prostate"',
         "rules[1].match.BodyPartExamined: 'pelvis|(prostate' is not a regular expression: missing ), "
         "unterminated subpattern at position 7"),
        ('BodyPartExamined: "chest|thorax"', "SeriesDescription: {max: 3}",
         "rules[2].match.SeriesDescription: a {min, max} range needs a numeric attribute; SeriesDescription has VR LO"),
        ('BodyPartExamined: "chest|thorax"', "calling_ae: {min: 1}",
         "rules[2].match.calling_ae: a {min, max} range needs a numeric attribute; calling_ae is the sender's AE title"),
        ("SliceThickness: {max: 3}", "SliceThickness: {}", "rules[0].match.SliceThickness: a range needs min, max or both"),
        ("SliceThickness: {max: 3}", "SliceThickness: {min: 5, max: 3}", "rules[0].match.SliceThickness: min 5 is above max 3"),
        ("SliceThickness: {max: 3}", "SliceThickness: {max: 3, mx: 4}",
         "rules[0].match.SliceThickness.mx: Extra inputs are not permitted"),
        ("SliceThickness: {max: 3}", "SliceThickness: {max: .nan}", "rules[0].match.SliceThickness.max: "),
        ("SliceThickness: {max: 3}", "SliceThickness: 3",
         'rules[0].match.SliceThickness: expected a regular expression (a quoted string) or a {min, max} range, '
         'got int 3 (quote it: "3")'),
        ("SliceThickness: {max: 3}", "PixelData: x", "rules[0].match.PixelData: PixelData has VR OB or OW, which cannot be matched"),
        ("SliceThickness: {max: 3}", "ReferencedImageSequence: x", "rules[0].match.ReferencedImageSequence: "),
        ('match: {BodyPartExamined: "chest|thorax"}', "match: [BodyPartExamined]", "rules[2].match: match is a mapping"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in ISSUE_EXAMPLE
    message = _error(tmp_path, ISSUE_EXAMPLE.replace(old, new, 1))
    assert expected in message
    assert "Value error" not in message


def test_several_models_need_rules(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE[: ISSUE_EXAMPLE.index("rules:")]
    assert ("rules: several models are configured (head, pelvis); add rules that say which series each one "
            "translates") in _error(tmp_path, text)
    assert _error(tmp_path, "models: {}\n").endswith("models: name at least one model (or leave models out and use model)")
    one = load_config(_write(tmp_path, "models:\n  brain: {steps: 5}\n"))
    assert list(one.named_models()) == ["brain"] and one.rules is None


def test_rules_may_name_the_default_model(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "rules:\n  - {name: all, translate: default}\n"))
    assert config.rules is not None and config.rules[0].translate == DEFAULT_MODEL_NAME
    assert "rules[0].translate: no model named 'head' (known: default)" in _error(
        tmp_path, "rules:\n  - {name: all, translate: head}\n")


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = (ISSUE_EXAMPLE.replace("translate: pelvis\n", "translate: pelvs\n")
            .replace("name: chest", "name: head-planning").replace("destinations: [tps]", "destinations: [tpz]"))
    lines = _error(tmp_path, text).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "rules[1].translate", "rules[1].destinations[0]", "rules[2].name"]


def test_check_config_prints_models_and_rules(tmp_path: Path) -> None:
    path = _write(tmp_path, ISSUE_EXAMPLE)
    ok = subprocess.run([sys.executable, "-m", "ct2mri_node", "check-config", str(path)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    out = ok.stdout
    assert "model head: bundled on auto, 20 steps, 1 sample(s)" in out
    assert "model pelvis: bundled on auto, 12 steps, 1 sample(s)" in out
    assert "rules (3, the first that matches decides; no match: ignored):" in out
    assert "1. head-planning: BodyPartExamined ~ /head|brain/i, SliceThickness <= 3 -> translate with model head " \
           "to every destination" in out
    assert "2. pelvis-planning: BodyPartExamined ~ /pelvis|prostate/i -> translate with model pelvis to tps" in out
    assert "3. chest: BodyPartExamined ~ /chest|thorax/i -> refuse: chest CT is outside this node's intended use" in out
    path.write_text(ISSUE_EXAMPLE.replace("translate: pelvis\n", "translate: pelvs\n"))
    bad = subprocess.run([sys.executable, "-m", "ct2mri_node", "check-config", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "rules[1].translate: no model named 'pelvs' (known: head, pelvis)" in bad.stderr
