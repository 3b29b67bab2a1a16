"""The deployment files parse and point at things that exist (images cannot be built here)."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import yaml

from ct2mri_node.cli import build_parser
from ct2mri_node.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_existing_paths_runs_as_non_root_with_a_spool_volume() -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    assert steps[0][0] == "FROM" and "nvidia/cuda" in steps[0][1] and "runtime" in steps[0][1]
    for word, args in steps:
        if word == "COPY":
            *sources, _target = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(word == "VOLUME" and "/var/lib/ct2mri-node" in args for word, args in steps)
    entry = [args for word, args in steps if word == "ENTRYPOINT"]
    assert entry and "ct2mri-node" in entry[0]


def test_container_config_is_valid_and_enables_operations() -> None:
    config = load_config(DEPLOY / "node.docker.yaml")
    assert config.spool_dir == Path("/var/lib/ct2mri-node/spool")
    assert config.ops.http_port == 9110 and config.ops.qa_preview


def test_compose_runs_the_node_beside_orthanc() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"orthanc", "ct2mri-node"} <= set(services)
    # everything else (redis, receiver, worker pool) is opt-in, behind the scale-out profile
    extra = {name: svc for name, svc in services.items() if name not in ("orthanc", "ct2mri-node")}
    assert all("scale-out" in svc.get("profiles", []) for svc in extra.values()), sorted(extra)
    build = services["ct2mri-node"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    for volume in services["ct2mri-node"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), source
        else:
            assert source in compose["volumes"], source
    orthanc = yaml.safe_load(services["orthanc"]["environment"]["ORTHANC_JSON"])
    assert orthanc["AuthenticationEnabled"] is True
    assert orthanc["DicomModalities"]["ct2mri"][0] == load_config(DEPLOY / "node.docker.yaml").node.ae_title


def test_systemd_unit_runs_serve_as_a_service_user() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "ct2mri-node.service")
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] not in ("root", "0")
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "ct2mri-node"
    args = build_parser().parse_args(argv[1:])    # the options exist in this CLI
    assert args.command == "serve" and args.log_json


def test_install_script_still_installs_the_pacs_for_ci() -> None:
    text = (DEPLOY / "install.sh").read_text()
    assert "orthanc" in text and "dcmtk" in text
