"""Config: the embedded default loads, unknown keys and bad values name their key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ct2mri_node.config import DEFAULT_CONFIG_PATH, DicomDestination, FolderDestination, load_config
from ct2mri_node.errors import ConfigError

ISSUE_EXAMPLE = """
node:
  ae_title: CT2MRI
  port: 11112
calling_aes:
  - {ae_title: PACS, host: 127.0.0.1}
destinations:
  - {name: archive, type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
  - {name: local, type: folder, path: ./var/outbox}
spool_dir: ./var/spool
series:
  quiet_period_s: 2
model:
  checkpoint: bundled
  device: auto
  steps: 20
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "node.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_issue_example_loads_and_resolves_relative_paths(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ISSUE_EXAMPLE))
    assert config.node.ae_title == "CT2MRI" and config.node.port == 11112
    assert config.calling_aes[0].host == "127.0.0.1"
    archive, local = config.destinations
    assert isinstance(archive, DicomDestination) and archive.port == 4242
    assert isinstance(local, FolderDestination)
    assert local.path == (tmp_path / "conf" / "var" / "outbox").resolve()
    assert config.spool_dir == (tmp_path / "conf" / "var" / "spool").resolve()
    assert config.series.quiet_period_s == 2.0


def test_embedded_default_is_valid() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.model.checkpoint == "bundled"
    assert [d.type for d in config.destinations] == ["folder"]
    assert config.calling_aes == [] and config.node.port == 11112


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("port: 4242", "port: 70000", "destinations[0].port"),
        ("  steps: 20", "  steps: 20\n  colour: red", "model.colour"),
        ("quiet_period_s: 2", "quiet_period_s: -1", "series.quiet_period_s"),
        ("type: folder", "type: ftp", "destinations[1]"),
        ("{ae_title: PACS,", "{ae_title: 'WAY_TOO_LONG_AE_TITLE',", "calling_aes[0].ae_title"),
        ("device: auto", "device: tpu", "model.device"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in ISSUE_EXAMPLE
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, ISSUE_EXAMPLE.replace(old, new)))
    assert f"{key}:" in str(info.value)


def test_duplicate_destination_names_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unique"):
        load_config(_write(tmp_path, ISSUE_EXAMPLE.replace("name: local", "name: archive")))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "node: [unclosed"))


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    good = _write(tmp_path, ISSUE_EXAMPLE)
    run = [sys.executable, "-m", "ct2mri_node", "check-config"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "destination archive (dicom): ORTHANC@127.0.0.1:4242" in ok.stdout
    good.write_text(ISSUE_EXAMPLE.replace("port: 4242", "port: zero"))
    bad = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "destinations[0].port" in bad.stderr
