"""The node's YAML configuration: one frozen pydantic model, validated once at load.

Unknown keys are errors, and every error names the offending key path
(``destinations[1].port: ...``). Relative paths in the file (``spool_dir``, a folder
destination's ``path``, a ``model.checkpoint`` directory) are resolved against the folder
that holds the YAML file, so a config behaves the same from any working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

#: The embedded default configuration (runs as is on a fresh machine).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "ct2mri-node.yaml"
#: Environment variable that overrides the default configuration path.
CONFIG_ENV = "CT2MRI_NODE_CONFIG"

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae(value: str) -> str:
    """An AE title: 1-16 printable ASCII characters without backslash, not all spaces."""
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no '\\')")
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class NodeSettings(_Frozen):
    """Our own AE: title, listening port and network limits."""

    ae_title: AETitle = "CT2MRI"
    port: Annotated[int, Field(ge=0, le=65535)] = 11112   # 0: any free port (tests)
    bind_address: str = "0.0.0.0"
    max_associations: Annotated[int, Field(ge=1, le=100)] = 10
    network_timeout_s: Seconds = 60.0
    acse_timeout_s: Seconds = 30.0
    dimse_timeout_s: Seconds = 60.0


class CallingAE(_Frozen):
    """One allowed caller; ``host`` (an IP address or name) restricts it to one peer."""

    ae_title: AETitle
    host: str | None = None


class DicomDestination(_Frozen):
    """A DICOM peer that receives the MR series by C-STORE."""

    name: Annotated[str, Field(min_length=1)]
    type: Literal["dicom"]
    ae_title: AETitle
    host: Annotated[str, Field(min_length=1)]
    port: Port
    timeout_s: Seconds = 30.0


class FolderDestination(_Frozen):
    """A folder that receives the MR series as files (``<path>/<series uid>/<sop uid>.dcm``)."""

    name: Annotated[str, Field(min_length=1)]
    type: Literal["folder"]
    path: Path


Destination = Annotated[DicomDestination | FolderDestination, Field(discriminator="type")]


class SeriesSettings(_Frozen):
    """When a received series counts as complete."""

    quiet_period_s: Annotated[float, Field(ge=0)] = 2.0
    min_slices: Annotated[int, Field(ge=1)] = 8


class ModelSettings(_Frozen):
    """Which checkpoint translates, on which device, with how many denoising steps."""

    checkpoint: str = "bundled"
    device: str = "auto"
    steps: Annotated[int, Field(ge=1, le=1000)] = 20
    seed: int = 0

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", value):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
        return value


class WorkerSettings(_Frozen):
    """Retry policy for sends: exponential backoff from ``backoff_initial_s``."""

    max_attempts: Annotated[int, Field(ge=1)] = 6
    backoff_initial_s: Seconds = 5.0
    backoff_max_s: Seconds = 600.0
    backoff_factor: Annotated[float, Field(ge=1)] = 2.0
    poll_interval_s: Seconds = 0.5


class NodeConfig(_Frozen):
    """The whole configuration file."""

    node: NodeSettings = NodeSettings()
    calling_aes: list[CallingAE] = []
    destinations: list[Destination] = []
    spool_dir: Path = Path("var/spool")
    series: SeriesSettings = SeriesSettings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()

    @model_validator(mode="after")
    def _unique_destination_names(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        return self

    def destination(self, name: str) -> DicomDestination | FolderDestination:
        """The destination called ``name``; ConfigError listing the known names otherwise."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"no destination named {name!r} (known: {known})")


def default_config_path() -> Path:
    """``$CT2MRI_NODE_CONFIG`` if set, else the embedded ``config/ct2mri-node.yaml``."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _key_path(loc: Sequence[int | str]) -> str:
    """Pydantic's error location as ``a.b[1].c`` (discriminator tags left out)."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in ("dicom", "folder"):
            pass  # tag of the destination union, not a key in the file
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(top level)"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{_key_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
    return f"invalid configuration {source}:\n  " + "\n  ".join(lines)


def _resolve(config: NodeConfig, base: Path) -> NodeConfig:
    """Make relative paths absolute against ``base`` (the YAML file's folder)."""

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    dests = [
        d.model_copy(update={"path": absolute(d.path)}) if isinstance(d, FolderDestination) else d
        for d in config.destinations
    ]
    model = config.model
    ckpt = model.checkpoint
    if ckpt != "bundled" and not Path(ckpt).is_absolute():
        model = model.model_copy(update={"checkpoint": str(absolute(Path(ckpt)))})
    return config.model_copy(
        update={"spool_dir": absolute(config.spool_dir), "destinations": dests, "model": model}
    )


def parse_config(data: Any, base_dir: Path, source: str = "") -> NodeConfig:
    """Validate already-parsed YAML data; relative paths resolve against ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: the top level must be a mapping of keys")
    try:
        config = NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    return _resolve(config, base_dir)


def load_config(path: str | os.PathLike[str] | None = None) -> NodeConfig:
    """Read and validate a YAML config file (the default one when ``path`` is None)."""
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {file} is not valid YAML: {exc}") from None
    return parse_config(data, file.resolve().parent, str(file))
