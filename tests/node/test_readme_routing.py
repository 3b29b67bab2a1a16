"""The routing page's example (docs/routing.md, linked from README) is a valid configuration and
decides as the page says it does; README's configuration summary and docs/configuration.md show
every top-level section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydicom.dataset import Dataset

from ct2mri_node.config import parse_config
from ct2mri_node.route.facts import SeriesFacts
from ct2mri_node.route.rules import decide

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ROUTING = ROOT / "docs" / "routing.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def _example() -> dict[str, object]:
    text = ROUTING.read_text(encoding="utf-8")
    section = text[text.index("# Routing: which series, which model, where"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "docs/routing.md has no YAML example"
    data = yaml.safe_load(block.group(1))
    assert {"models", "rules", "destinations"} <= set(data)
    return data


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("attributes, rule, action, model, destinations", [
    ({"BodyPartExamined": "HEAD", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "SliceThickness": "1.0"},
     "head-planning", "translate", "head", None),
    ({"BodyPartExamined": "PROSTATE", "SliceThickness": "2.5"}, "pelvis-planning", "translate", "pelvis", ("tps",)),
    ({"BodyPartExamined": "HEAD", "ContrastBolusAgent": "IOMEPROL", "SliceThickness": "1.0"},
     "contrast", "refuse", None, None),
    ({"BodyPartExamined": "PELVIS", "SliceThickness": "5.0"}, "thick", "refuse", None, None),
    ({"BodyPartExamined": "HEAD", "ImageType": ["DERIVED", "SECONDARY", "REFORMATTED"], "SliceThickness": "1.0"},
     "(no rule)", "ignore", None, None),
    ({"BodyPartExamined": "CHEST", "SliceThickness": "1.0"}, "(no rule)", "ignore", None, None),
])
def test_readme_example_decides_as_documented(
    attributes: dict[str, object], rule: str, action: str, model: str | None,
    destinations: tuple[str, ...] | None, tmp_path: Path,
) -> None:
    config = parse_config(_example(), tmp_path, "docs/routing.md")
    decision = decide(config, SeriesFacts(dataset=_header(**attributes), calling_ae="PACS"))
    assert (decision.rule, decision.action, decision.model, decision.destinations) == (
        rule, action, model, destinations)
    if action == "refuse":
        assert decision.reason and len(decision.reason) > 10


def test_readme_config_section_lists_every_top_level_section() -> None:
    from ct2mri_node.config import NodeConfig

    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Configuration"):text.index("### Routing: which series")]
    for key in NodeConfig.model_fields:
        assert re.search(rf"^\| `{key}:` \| \S", section, re.M), f"README's configuration summary does not show {key}:"
    reference = CONFIGURATION.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", reference, re.S)
    assert block is not None, "docs/configuration.md has no annotated YAML block"
    for key in NodeConfig.model_fields:
        assert re.search(rf"^#? ?{key}:", block.group(1), re.M), f"docs/configuration.md does not show {key}:"
    assert "](docs/configuration.md)" in section
